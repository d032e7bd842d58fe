//! Agent-side encoding of run events into wire messages (the agent's gRPC edge).
use super::runner::{EvalReport, FinetuneReport};
use proto::pb;

pub fn eval_performance(r: &EvalReport) -> pb::EvalPerformance {
    pb::EvalPerformance {
        load_s: r.load_s,
        eval_s: r.eval_s,
        samples_per_s: r.samples_per_s,
        tokens_per_s: r.tokens_per_s,
        peak_memory_mib: r.peak_memory_mib,
        device_name: r.device_name.clone(),
    }
}

pub fn training_summary(r: &FinetuneReport, adapter_artifact: String) -> pb::TrainingSummary {
    pb::TrainingSummary {
        adapter_artifact,
        adapter_hash: r.adapter_hash.clone(),
        steps: r.steps,
        epochs_run: r.epochs_run,
        final_train_loss: r.final_train_loss,
        best_validation_loss: r.best_validation_loss,
        stopped_early: r.stopped_early,
        train_s: r.train_s,
        load_s: r.load_s,
        tokens_per_s: r.tokens_per_s,
        peak_memory_mib: r.peak_memory_mib,
        device_name: r.device_name.clone(),
        resumed_from_step: r.resumed_from_step,
        curve: r
            .curve
            .iter()
            .map(|&(step, train_loss, validation_loss)| pb::CurvePoint {
                step,
                train_loss,
                validation_loss,
            })
            .collect(),
    }
}

pub fn device(d: &crate::probe::DeviceReport) -> pb::Device {
    use crate::probe::DeviceChoice;
    let (kind, index) = match d.choice {
        DeviceChoice::Cpu => (pb::DeviceKind::Cpu, 0),
        DeviceChoice::Cuda(i) => (pb::DeviceKind::Cuda, i),
    };
    pb::Device {
        kind: kind as i32,
        index,
        uuid: d.uuid.clone(),
        name: d.name.clone(),
        total_mib: d.total_mib,
        free_mib: d.free_mib,
        driver: d.driver.clone(),
    }
}
