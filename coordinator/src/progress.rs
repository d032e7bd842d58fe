//! Terminal progress for `watch` and `run`: one indicatif bar per task, fed by experiment events.
use crate::state::core::ExperimentState;
use crate::state::status::{ExperimentEvent, WatchEvent};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use shared::task::{ProgressEvent, TaskState};
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

fn state_name(s: &TaskState) -> &'static str {
    match s {
        TaskState::Pending => "pending",
        TaskState::Ready => "queued",
        TaskState::Offered { .. } => "offered",
        TaskState::Running { .. } => "running",
        TaskState::Succeeded => "done",
        TaskState::Failed => "FAILED",
        TaskState::Cancelled => "cancelled",
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
    pub fn apply(&mut self, ev: &ExperimentEvent) -> Option<ExperimentState> {
        match &ev.event {
            WatchEvent::Task(t) => {
                let b = self.bar(&t.task.0);
                let state = state_name(&t.state);
                let mut msg = state.to_string();
                if let Some(agent) = &t.agent {
                    msg.push_str(&format!(" on {}", agent.0));
                }
                if !t.detail.is_empty() {
                    msg.push_str(&format!(": {}", t.detail));
                }
                tracing::debug!(task = %t.task.0, state, agent = ?t.agent.as_ref().map(|a| &a.0), "task");
                b.set_message(msg);
                if t.state == TaskState::Succeeded {
                    b.set_position(b.length().unwrap_or(0));
                }
                if t.state.is_terminal() {
                    b.abandon();
                }
            }
            WatchEvent::Progress { task, event } => {
                let b = self.bar(&task.task.0);
                match event {
                    ProgressEvent::TrainStep {
                        step,
                        total_steps,
                        epoch,
                        loss,
                        lr,
                        tokens_per_s,
                        ..
                    } => {
                        b.set_length(*total_steps);
                        b.set_position(*step);
                        b.set_message(format!(
                            "epoch {epoch} loss {loss:.4} lr {lr:.2e} {tokens_per_s:.0} tok/s"
                        ));
                    }
                    ProgressEvent::Validation { loss, .. } => {
                        b.set_message(format!("validation loss {loss:.4}"))
                    }
                    ProgressEvent::EvalProgress {
                        done,
                        total,
                        samples_per_s,
                        tokens_per_s,
                        ..
                    } => {
                        b.set_length(*total);
                        b.set_position(*done);
                        b.set_message(format!(
                            "{samples_per_s:.2} samples/s {tokens_per_s:.0} tok/s"
                        ));
                    }
                    ProgressEvent::Stage { name } => b.set_message(name.clone()),
                }
            }
            WatchEvent::Finished(s) => {
                for b in self.bars.values() {
                    if !b.is_finished() {
                        b.abandon();
                    }
                }
                return Some(*s);
            }
        }
        None
    }
}
