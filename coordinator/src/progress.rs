//! Terminal progress for `watch` and `run`: one indicatif bar per task, fed by experiment events.
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use proto::pb;
use std::collections::HashMap;

/// Whether bars are drawn (a terminal) or events are logged line by line (CI, pipes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    Bars,
    Hidden,
}

pub struct ProgressView {
    multi: MultiProgress,
    bars: HashMap<String, ProgressBar>,
    order: Vec<String>,
}

fn state_name(s: i32) -> &'static str {
    match pb::TaskStateKind::try_from(s) {
        Ok(pb::TaskStateKind::TaskStatePending) => "pending",
        Ok(pb::TaskStateKind::TaskStateReady) => "queued",
        Ok(pb::TaskStateKind::TaskStateOffered) => "offered",
        Ok(pb::TaskStateKind::TaskStateRunning) => "running",
        Ok(pb::TaskStateKind::TaskStateSucceeded) => "done",
        Ok(pb::TaskStateKind::TaskStateFailed) => "FAILED",
        Ok(pb::TaskStateKind::TaskStateCancelled) => "cancelled",
        _ => "?",
    }
}

impl ProgressView {
    pub fn new(display: Display) -> ProgressView {
        let target = match display {
            Display::Bars => ProgressDrawTarget::stderr(),
            Display::Hidden => ProgressDrawTarget::hidden(),
        };
        ProgressView {
            multi: MultiProgress::with_draw_target(target),
            bars: HashMap::new(),
            order: Vec::new(),
        }
    }

    fn bar(&mut self, task: &str) -> ProgressBar {
        if let Some(b) = self.bars.get(task) {
            return b.clone();
        }
        let style = ProgressStyle::with_template("{prefix:<28} [{bar:30}] {pos:>5}/{len:<5} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let b = self.multi.add(
            ProgressBar::new(0)
                .with_style(style)
                .with_prefix(task.to_string()),
        );
        self.bars.insert(task.to_string(), b.clone());
        self.order.push(task.to_string());
        b
    }

    /// Applies one event; returns the experiment's final state once it is finished.
    pub fn apply(&mut self, ev: &pb::ExperimentEvent) -> Option<pb::ExperimentStateKind> {
        use pb::experiment_event::Event;
        match &ev.event {
            Some(Event::Task(t)) => {
                let b = self.bar(&t.task_id);
                let mut msg = state_name(t.state).to_string();
                if !t.agent_id.is_empty() {
                    msg.push_str(&format!(" on {}", t.agent_id));
                }
                if !t.detail.is_empty() {
                    msg.push_str(&format!(": {}", t.detail));
                }
                tracing::debug!(task = %t.task_id, state = state_name(t.state), agent = %t.agent_id, "task");
                b.set_message(msg);
                if t.state == pb::TaskStateKind::TaskStateSucceeded as i32 {
                    b.set_position(b.length().unwrap_or(0));
                }
                if matches!(
                    pb::TaskStateKind::try_from(t.state),
                    Ok(pb::TaskStateKind::TaskStateSucceeded
                        | pb::TaskStateKind::TaskStateFailed
                        | pb::TaskStateKind::TaskStateCancelled)
                ) {
                    b.abandon();
                }
            }
            Some(Event::Progress(p)) => {
                let task = p.task.as_ref().map(|t| t.task_id.clone())?;
                let b = self.bar(&task);
                match p.event.as_ref().and_then(|e| e.event.as_ref()) {
                    Some(pb::progress_event::Event::TrainStep(s)) => {
                        b.set_length(s.total_steps);
                        b.set_position(s.step);
                        b.set_message(format!(
                            "epoch {} loss {:.4} lr {:.2e} {:.0} tok/s",
                            s.epoch, s.loss, s.lr, s.tokens_per_s
                        ));
                    }
                    Some(pb::progress_event::Event::Validation(v)) => {
                        b.set_message(format!("validation loss {:.4}", v.loss))
                    }
                    Some(pb::progress_event::Event::EvalProgress(e)) => {
                        b.set_length(e.total);
                        b.set_position(e.done);
                        b.set_message(format!(
                            "{:.2} samples/s {:.0} tok/s",
                            e.samples_per_s, e.tokens_per_s
                        ));
                    }
                    Some(pb::progress_event::Event::Stage(s)) => b.set_message(s.name.clone()),
                    None => {}
                }
            }
            Some(Event::Finished(s)) => {
                for b in self.bars.values() {
                    if !b.is_finished() {
                        b.abandon();
                    }
                }
                return pb::ExperimentStateKind::try_from(*s).ok();
            }
            None => {}
        }
        None
    }
}
