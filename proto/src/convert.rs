//! `TryFrom` between `pb::*` and the `shared` domain types, used by both gRPC edges.
//! Decoding checks what proto3 cannot: required sub-messages present, enums not `UNSPECIFIED`.
use crate::pb;
use shared::task::{
    ModelRole, ModelSpec, PredictionRow, ProgressEvent, Quantization, TaskId, TaskKind, TaskSpec,
};

/// A wire message that does not map onto a domain value.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConvertError {
    #[error("`{0}` is missing")]
    Missing(&'static str),
    #[error("`{field}` has unknown or unspecified value {value}")]
    BadEnum { field: &'static str, value: i32 },
    #[error("`{field}` has {count} entries, over the limit of {max}")]
    TooMany {
        field: &'static str,
        count: usize,
        max: usize,
    },
}

fn task_kind(v: i32) -> Result<TaskKind, ConvertError> {
    match pb::TaskKind::try_from(v) {
        Ok(pb::TaskKind::Finetune) => Ok(TaskKind::Finetune),
        Ok(pb::TaskKind::Evaluate) => Ok(TaskKind::Evaluate),
        _ => Err(ConvertError::BadEnum {
            field: "task.kind",
            value: v,
        }),
    }
}

impl From<TaskKind> for pb::TaskKind {
    fn from(k: TaskKind) -> Self {
        match k {
            TaskKind::Finetune => pb::TaskKind::Finetune,
            TaskKind::Evaluate => pb::TaskKind::Evaluate,
        }
    }
}

impl From<&ModelSpec> for pb::ModelSpec {
    fn from(m: &ModelSpec) -> Self {
        pb::ModelSpec {
            key: m.key.clone(),
            name: m.name.clone(),
            revision: m.revision.clone(),
            label: m.label.clone(),
            size: m.size.clone(),
            role: match m.role {
                ModelRole::Llm => pb::ModelRole::Llm,
                ModelRole::Slm => pb::ModelRole::Slm,
            } as i32,
            quantization: match m.quantization {
                Quantization::None => pb::Quantization::None,
                Quantization::Q4 => pb::Quantization::Q4,
            } as i32,
        }
    }
}

impl TryFrom<pb::ModelSpec> for ModelSpec {
    type Error = ConvertError;
    fn try_from(m: pb::ModelSpec) -> Result<Self, ConvertError> {
        let role = match pb::ModelRole::try_from(m.role) {
            Ok(pb::ModelRole::Llm) => ModelRole::Llm,
            Ok(pb::ModelRole::Slm) => ModelRole::Slm,
            _ => {
                return Err(ConvertError::BadEnum {
                    field: "model.role",
                    value: m.role,
                });
            }
        };
        let quantization = match pb::Quantization::try_from(m.quantization) {
            Ok(pb::Quantization::None) => Quantization::None,
            Ok(pb::Quantization::Q4) => Quantization::Q4,
            _ => {
                return Err(ConvertError::BadEnum {
                    field: "model.quantization",
                    value: m.quantization,
                });
            }
        };
        Ok(ModelSpec {
            key: m.key,
            name: m.name,
            revision: m.revision,
            label: m.label,
            size: m.size,
            role,
            quantization,
        })
    }
}

impl From<&TaskSpec> for pb::TaskSpec {
    fn from(t: &TaskSpec) -> Self {
        pb::TaskSpec {
            id: t.id.0.clone(),
            kind: pb::TaskKind::from(t.kind) as i32,
            model: Some((&t.model).into()),
            depends_on: t.depends_on.iter().map(|d| d.0.clone()).collect(),
            estimate_mib: t.estimate_mib,
        }
    }
}

impl TryFrom<pb::TaskSpec> for TaskSpec {
    type Error = ConvertError;
    fn try_from(t: pb::TaskSpec) -> Result<Self, ConvertError> {
        Ok(TaskSpec {
            id: TaskId(t.id),
            kind: task_kind(t.kind)?,
            model: t
                .model
                .ok_or(ConvertError::Missing("task.model"))?
                .try_into()?,
            depends_on: t.depends_on.into_iter().map(TaskId).collect(),
            estimate_mib: t.estimate_mib,
        })
    }
}

impl From<&PredictionRow> for pb::PredictionRow {
    fn from(r: &PredictionRow) -> Self {
        pb::PredictionRow {
            sample_id: r.sample_id.clone(),
            reference: r.reference.clone(),
            raw_output: r.raw_output.clone(),
            extracted: r.extracted.clone(),
            correct: r.correct,
            latency_ms: r.latency_ms,
            generated_tokens: r.generated_tokens,
            prompt_tokens: r.prompt_tokens,
        }
    }
}

impl From<pb::PredictionRow> for PredictionRow {
    fn from(r: pb::PredictionRow) -> Self {
        PredictionRow {
            sample_id: r.sample_id,
            reference: r.reference,
            raw_output: r.raw_output,
            extracted: r.extracted,
            correct: r.correct,
            latency_ms: r.latency_ms,
            generated_tokens: r.generated_tokens,
            prompt_tokens: r.prompt_tokens,
        }
    }
}

impl From<&ProgressEvent> for pb::ProgressEvent {
    fn from(e: &ProgressEvent) -> Self {
        use pb::progress_event::Event;
        let event = match e.clone() {
            ProgressEvent::TrainStep {
                epoch,
                step,
                total_steps,
                loss,
                lr,
                tokens_per_s,
                memory_mib,
            } => Event::TrainStep(pb::TrainStep {
                epoch,
                step,
                total_steps,
                loss,
                lr,
                tokens_per_s,
                memory_mib,
            }),
            ProgressEvent::Validation { epoch, step, loss } => {
                Event::Validation(pb::Validation { epoch, step, loss })
            }
            ProgressEvent::EvalProgress {
                done,
                total,
                samples_per_s,
                tokens_per_s,
                memory_mib,
            } => Event::EvalProgress(pb::EvalProgress {
                done,
                total,
                samples_per_s,
                tokens_per_s,
                memory_mib,
            }),
            ProgressEvent::Stage { name } => Event::Stage(pb::Stage { name }),
        };
        pb::ProgressEvent { event: Some(event) }
    }
}

impl TryFrom<pb::ProgressEvent> for ProgressEvent {
    type Error = ConvertError;
    fn try_from(e: pb::ProgressEvent) -> Result<Self, ConvertError> {
        use pb::progress_event::Event;
        Ok(
            match e.event.ok_or(ConvertError::Missing("progress.event"))? {
                Event::TrainStep(s) => ProgressEvent::TrainStep {
                    epoch: s.epoch,
                    step: s.step,
                    total_steps: s.total_steps,
                    loss: s.loss,
                    lr: s.lr,
                    tokens_per_s: s.tokens_per_s,
                    memory_mib: s.memory_mib,
                },
                Event::Validation(v) => ProgressEvent::Validation {
                    epoch: v.epoch,
                    step: v.step,
                    loss: v.loss,
                },
                Event::EvalProgress(p) => ProgressEvent::EvalProgress {
                    done: p.done,
                    total: p.total,
                    samples_per_s: p.samples_per_s,
                    tokens_per_s: p.tokens_per_s,
                    memory_mib: p.memory_mib,
                },
                Event::Stage(s) => ProgressEvent::Stage { name: s.name },
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TaskSpec {
        TaskSpec {
            id: TaskId("eval:SLM_Qwen-3B".into()),
            kind: TaskKind::Evaluate,
            model: ModelSpec {
                key: "SLM_Qwen-3B".into(),
                name: "Qwen/Qwen2.5-3B-Instruct".into(),
                revision: Some("main".into()),
                label: "Qwen-3B".into(),
                size: "3B".into(),
                role: ModelRole::Slm,
                quantization: Quantization::None,
            },
            depends_on: vec![TaskId("finetune:SLM_Qwen-3B".into())],
            estimate_mib: 9000,
        }
    }

    #[test]
    fn task_spec_roundtrips() {
        let s = spec();
        let back = TaskSpec::try_from(pb::TaskSpec::from(&s)).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn unspecified_enum_and_missing_model_are_errors() {
        let mut p = pb::TaskSpec::from(&spec());
        p.kind = 0;
        assert_eq!(
            TaskSpec::try_from(p.clone()).unwrap_err(),
            ConvertError::BadEnum {
                field: "task.kind",
                value: 0
            }
        );
        p.kind = pb::TaskKind::Evaluate as i32;
        p.model = None;
        assert_eq!(
            TaskSpec::try_from(p).unwrap_err(),
            ConvertError::Missing("task.model")
        );
    }

    #[test]
    fn progress_and_predictions_roundtrip() {
        let events = [
            ProgressEvent::TrainStep {
                epoch: 1,
                step: 7,
                total_steps: 20,
                loss: 1.5,
                lr: 1e-4,
                tokens_per_s: 99.0,
                memory_mib: 5,
            },
            ProgressEvent::Validation {
                epoch: 1,
                step: 7,
                loss: 1.25,
            },
            ProgressEvent::EvalProgress {
                done: 3,
                total: 9,
                samples_per_s: 1.0,
                tokens_per_s: 2.0,
                memory_mib: 3,
            },
            ProgressEvent::Stage {
                name: "loading".into(),
            },
        ];
        for e in events {
            assert_eq!(
                ProgressEvent::try_from(pb::ProgressEvent::from(&e)).unwrap(),
                e
            );
        }
        let row = PredictionRow {
            sample_id: "embedded-3".into(),
            reference: "J069".into(),
            raw_output: "J06.9".into(),
            extracted: Some("J069".into()),
            correct: true,
            latency_ms: 12.5,
            generated_tokens: 4,
            prompt_tokens: 80,
        };
        assert_eq!(PredictionRow::from(pb::PredictionRow::from(&row)), row);
    }
}
