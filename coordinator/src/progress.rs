//! Progress for `watch` and `run`: one indicatif bar per task on a terminal; off a terminal (CI
//! logs, `nohup`, `tee`) plain lines — each task's state changes at once and, every
//! [`LINE_INTERVAL`], one line per running task with its step, rate and ETA (as tqdm does).
use crate::state::core::ExperimentState;
use crate::state::status::{ExperimentEvent, WatchEvent};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use shared::task::{ProgressEvent, TaskState};
use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

/// How often progress lines are printed off a terminal.
pub const LINE_INTERVAL: Duration = Duration::from_secs(30);

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// indicatif bars on stderr (a terminal).
    Bars,
    /// Plain lines on stderr: state changes, and running tasks every [`LINE_INTERVAL`].
    Lines,
    /// Nothing (tests).
    Hidden,
}

/// What the line printer knows of one task.
#[derive(Debug, Default)]
struct TaskLine {
    state: String,
    detail: String,
    failed: bool,
    pos: u64,
    len: u64,
    unit: &'static str,
    msg: String,
    /// The first progress position seen and when: the rate is measured from there.
    first: Option<(Instant, u64)>,
}

pub struct ProgressView {
    multi: MultiProgress,
    bars: HashMap<String, ProgressBar>,
    order: Vec<String>,
    lines: HashMap<String, TaskLine>,
    out: Option<Box<dyn Write + Send>>,
    every: Duration,
    last_lines: Instant,
}

/// An experiment's state in words (`succeeded`, `failed`, `running`).
pub fn state_words(state: ExperimentState) -> &'static str {
    match state {
        ExperimentState::Succeeded => "succeeded",
        ExperimentState::Failed => "failed",
        ExperimentState::Running => "running",
    }
}

/// The last lines of a run that did not succeed: which tasks failed, each with its first error.
pub fn failure_text(state: ExperimentState, failures: &[(String, String)]) -> String {
    let what = match state {
        ExperimentState::Failed => "failed",
        _ => "did not succeed",
    };
    let mut out = format!("the experiment {what}");
    if failures.is_empty() {
        out.push_str(" (no task failed: it was stopped)");
    } else {
        out.push_str(&format!(
            ": {} task{} failed",
            failures.len(),
            if failures.len() == 1 { "" } else { "s" }
        ));
        for (task, why) in failures {
            out.push_str(&format!("\n  {task}: {why}"));
        }
    }
    out
}

/// `1h02m`, `4m05s`, `12s`.
fn duration_text(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s / 60) % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

impl TaskLine {
    /// `finetune:SLM  running  step 40/160 (25%)  1.25 steps/s  ETA 1m36s  epoch 1 loss 0.4211 …`
    fn text(&self, task: &str, now: Instant) -> String {
        let mut out = format!("{task}  {}", self.state);
        if self.len > 0 {
            let pct = 100.0 * self.pos as f64 / self.len as f64;
            out.push_str(&format!(
                "  {} {}/{} ({pct:.0}%)",
                self.unit, self.pos, self.len
            ));
            if let Some((t0, p0)) = self.first {
                let secs = now.duration_since(t0).as_secs_f64();
                let done = self.pos.saturating_sub(p0);
                if secs > 0.0 && done > 0 {
                    let rate = done as f64 / secs;
                    let left = self.len.saturating_sub(self.pos) as f64 / rate;
                    out.push_str(&format!(
                        "  {rate:.2} {}s/s  ETA {}",
                        self.unit,
                        duration_text(Duration::from_secs_f64(left))
                    ));
                }
            }
        }
        if !self.msg.is_empty() {
            out.push_str(&format!("  {}", self.msg));
        }
        out
    }
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
            Display::Lines | Display::Hidden => ProgressDrawTarget::hidden(),
        };
        let out: Option<Box<dyn Write + Send>> = match display {
            Display::Lines => Some(Box::new(std::io::stderr())),
            Display::Bars | Display::Hidden => None,
        };
        ProgressView {
            multi: MultiProgress::with_draw_target(target),
            bars: HashMap::new(),
            order: Vec::new(),
            lines: HashMap::new(),
            out,
            every: LINE_INTERVAL,
            last_lines: Instant::now(),
        }
    }

    /// Plain progress lines into `out`, running tasks every `every` (tests).
    pub fn lines_into(out: Box<dyn Write + Send>, every: Duration) -> ProgressView {
        ProgressView {
            out: Some(out),
            every,
            ..ProgressView::new(Display::Hidden)
        }
    }

    fn line(&mut self, text: &str) {
        if let Some(out) = &mut self.out {
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
        }
    }

    /// Prints one line per running task when the interval has passed since the last time. Called
    /// on every event and by the caller's timer, so a quiet task still gets its line.
    pub fn tick(&mut self) {
        let now = Instant::now();
        if self.out.is_none() || now.duration_since(self.last_lines) < self.every {
            return;
        }
        self.last_lines = now;
        let texts: Vec<String> = self
            .order
            .iter()
            .filter_map(|task| {
                let l = self.lines.get(task)?;
                (l.state == "running").then(|| l.text(task, now))
            })
            .collect();
        for t in texts {
            self.line(&t);
        }
    }

    /// The tasks that failed, each with its error (for the run's last lines).
    pub fn failures(&self) -> Vec<(String, String)> {
        self.order
            .iter()
            .filter_map(|task| {
                let l = self.lines.get(task)?;
                l.failed.then(|| (task.clone(), l.detail.clone()))
            })
            .collect()
    }

    /// Records a task's progress position for the line printer.
    fn progress(&mut self, task: &str, unit: &'static str, pos: u64, len: u64, msg: String) {
        let l = self.lines.entry(task.to_string()).or_default();
        if l.first.is_none() || pos < l.pos {
            l.first = Some((Instant::now(), pos));
        }
        (l.unit, l.pos, l.len, l.msg) = (unit, pos, len, msg);
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
                let l = self.lines.entry(t.task.0.clone()).or_default();
                let changed = l.state != state || l.detail != t.detail;
                l.state = state.to_string();
                l.detail = t.detail.clone();
                l.failed = t.state == TaskState::Failed;
                if changed {
                    self.line(&format!("{}  {msg}", t.task.0));
                }
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
                        let msg = format!(
                            "epoch {epoch} loss {loss:.4} lr {lr:.2e} {tokens_per_s:.0} tok/s"
                        );
                        self.progress(&task.task.0, "step", *step, *total_steps, msg.clone());
                        b.set_message(msg);
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
                        let msg = format!("{tokens_per_s:.0} generated tok/s");
                        self.progress(&task.task.0, "sample", *done, *total, msg);
                        b.set_message(format!(
                            "{samples_per_s:.2} samples/s {tokens_per_s:.0} tok/s"
                        ));
                    }
                    ProgressEvent::Stage { name } => {
                        self.lines.entry(task.task.0.clone()).or_default().msg = name.clone();
                        b.set_message(name.clone())
                    }
                }
            }
            WatchEvent::Finished(s) => {
                self.line(&format!("experiment {}", state_words(*s)));
                for b in self.bars.values() {
                    if !b.is_finished() {
                        b.abandon();
                    }
                }
                return Some(*s);
            }
        }
        self.tick();
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::core::TaskRef;
    use crate::state::status::TaskStatus;
    use shared::task::{AgentId, TaskId};
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn event(event: WatchEvent) -> ExperimentEvent {
        ExperimentEvent {
            experiment: crate::experiment::ExperimentId("x".into()),
            event,
        }
    }

    fn task(id: &str, state: TaskState, detail: &str) -> ExperimentEvent {
        event(WatchEvent::Task(TaskStatus {
            task: TaskId(id.into()),
            state,
            agent: Some(AgentId("gpu0".into())),
            attempt: 1,
            detail: detail.into(),
            predictions: 0,
            estimate_mib: 0,
        }))
    }

    fn step(id: &str, step: u64, total: u64) -> ExperimentEvent {
        event(WatchEvent::Progress {
            task: TaskRef {
                experiment: crate::experiment::ExperimentId("x".into()),
                task: TaskId(id.into()),
                attempt: 1,
            },
            event: ProgressEvent::TrainStep {
                epoch: 1,
                step,
                total_steps: total,
                loss: 0.5,
                lr: 1e-3,
                tokens_per_s: 100.0,
                memory_mib: 0,
            },
        })
    }

    fn running() -> TaskState {
        TaskState::Running {
            agent: AgentId("gpu0".into()),
        }
    }

    #[test]
    fn off_a_terminal_running_tasks_get_lines_with_step_rate_and_eta() {
        let out = Shared::default();
        let mut v = ProgressView::lines_into(Box::new(out.clone()), Duration::ZERO);
        v.apply(&task("finetune:slm", running(), ""));
        v.apply(&step("finetune:slm", 10, 160));
        std::thread::sleep(Duration::from_millis(20));
        v.apply(&step("finetune:slm", 40, 160));
        let text = out.text();
        assert!(text.contains("finetune:slm  running on gpu0"), "{text}");
        let last = text.lines().last().unwrap();
        assert!(last.contains("step 40/160 (25%)"), "{last}");
        assert!(last.contains("steps/s") && last.contains("ETA "), "{last}");
        assert!(last.contains("loss 0.5000"), "{last}");
    }

    #[test]
    fn lines_wait_for_the_interval_and_failures_are_named_with_their_error() {
        let out = Shared::default();
        let mut v = ProgressView::lines_into(Box::new(out.clone()), Duration::from_secs(3600));
        v.apply(&task("eval:a", running(), ""));
        v.apply(&step("eval:a", 1, 10));
        v.apply(&step("eval:a", 2, 10));
        assert!(
            !out.text().contains("step 2/10"),
            "no periodic line before the interval: {}",
            out.text()
        );
        let why = "failed 3 times; last error: a model file must be a `.gguf`";
        v.apply(&task("eval:a", TaskState::Failed, why));
        assert!(
            out.text()
                .contains("eval:a  FAILED on gpu0: failed 3 times"),
            "{}",
            out.text()
        );
        assert_eq!(v.failures(), vec![("eval:a".to_string(), why.to_string())]);
    }

    #[test]
    fn a_failed_run_names_its_failed_tasks_and_their_errors() {
        let failures = vec![
            (
                "eval:llm".to_string(),
                "model not found: /m/x.gguf".to_string(),
            ),
            ("finetune:slm".to_string(), "out of memory".to_string()),
        ];
        assert_eq!(
            failure_text(ExperimentState::Failed, &failures),
            "the experiment failed: 2 tasks failed\n  eval:llm: model not found: /m/x.gguf\n  finetune:slm: out of memory"
        );
    }

    #[test]
    fn durations_read_like_tqdm() {
        assert_eq!(duration_text(Duration::from_secs(12)), "12s");
        assert_eq!(duration_text(Duration::from_secs(245)), "4m05s");
        assert_eq!(duration_text(Duration::from_secs(3720)), "1h02m");
    }
}
