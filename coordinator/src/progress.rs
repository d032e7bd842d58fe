//! Progress for `watch` and `run`: one indicatif bar per task on a terminal; off a terminal (CI
//! logs, `nohup`, `tee`) plain lines — each task's state changes at once and, every
//! [`LINE_INTERVAL`], one line per running task with its step, rate and ETA (as tqdm does).
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use proto::pb;
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

/// The last lines of a run that did not succeed: which tasks failed, each with its first error.
pub fn failure_text(state: pb::ExperimentStateKind, failures: &[(String, String)]) -> String {
    let what = match state {
        pb::ExperimentStateKind::ExperimentStateFailed => "failed",
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

/// An experiment's state in words (`succeeded`, `failed`, `running`).
pub fn state_words(state: pb::ExperimentStateKind) -> &'static str {
    match state {
        pb::ExperimentStateKind::ExperimentStateSucceeded => "succeeded",
        pb::ExperimentStateKind::ExperimentStateFailed => "failed",
        pb::ExperimentStateKind::ExperimentStateRunning => "running",
        pb::ExperimentStateKind::ExperimentStateUnspecified => "unknown",
    }
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
    /// `train:SLM  step 40/160 (25%)  1.25 steps/s  ETA 1m36s  epoch 1 loss 0.4211 …`
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

    /// Prints one line per running task when [`LINE_INTERVAL`] has passed since the last time.
    /// Called on every event and by the caller's timer, so a quiet task still gets its line.
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
                let l = self.lines.entry(t.task_id.clone()).or_default();
                let changed = l.state != state_name(t.state) || l.detail != t.detail;
                l.state = state_name(t.state).to_string();
                l.detail = t.detail.clone();
                l.failed = t.state == pb::TaskStateKind::TaskStateFailed as i32;
                if changed {
                    self.line(&format!("{}  {msg}", t.task_id));
                }
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
                        let msg = format!(
                            "epoch {} loss {:.4} lr {:.2e} {:.0} tok/s",
                            s.epoch, s.loss, s.lr, s.tokens_per_s
                        );
                        self.progress(&task, "step", s.step, s.total_steps, msg.clone());
                        b.set_message(msg);
                    }
                    Some(pb::progress_event::Event::Validation(v)) => {
                        b.set_message(format!("validation loss {:.4}", v.loss))
                    }
                    Some(pb::progress_event::Event::EvalProgress(e)) => {
                        b.set_length(e.total);
                        b.set_position(e.done);
                        let msg = format!("{:.0} generated tok/s", e.tokens_per_s);
                        self.progress(&task, "sample", e.done, e.total, msg);
                        b.set_message(format!(
                            "{:.2} samples/s {:.0} tok/s",
                            e.samples_per_s, e.tokens_per_s
                        ));
                    }
                    Some(pb::progress_event::Event::Stage(s)) => {
                        self.lines.entry(task).or_default().msg = s.name.clone();
                        b.set_message(s.name.clone())
                    }
                    None => {}
                }
            }
            Some(Event::Finished(s)) => {
                self.line(&format!(
                    "experiment {}",
                    pb::ExperimentStateKind::try_from(*s).map_or("?", state_words)
                ));
                for b in self.bars.values() {
                    if !b.is_finished() {
                        b.abandon();
                    }
                }
                return pb::ExperimentStateKind::try_from(*s).ok();
            }
            None => {}
        }
        self.tick();
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::experiment_event::Event;
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

    fn task(id: &str, state: pb::TaskStateKind, detail: &str) -> pb::ExperimentEvent {
        pb::ExperimentEvent {
            event: Some(Event::Task(pb::TaskStatus {
                task_id: id.into(),
                state: state as i32,
                agent_id: "gpu0".into(),
                detail: detail.into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn step(id: &str, step: u64, total: u64) -> pb::ExperimentEvent {
        pb::ExperimentEvent {
            event: Some(Event::Progress(pb::TaskProgress {
                task: Some(pb::TaskRef {
                    task_id: id.into(),
                    ..Default::default()
                }),
                event: Some(pb::ProgressEvent {
                    event: Some(pb::progress_event::Event::TrainStep(pb::TrainStep {
                        step,
                        total_steps: total,
                        epoch: 1,
                        loss: 0.5,
                        ..Default::default()
                    })),
                }),
            })),
            ..Default::default()
        }
    }

    #[test]
    fn off_a_terminal_running_tasks_get_lines_with_step_rate_and_eta() {
        let out = Shared::default();
        let mut v = ProgressView::lines_into(Box::new(out.clone()), Duration::ZERO);
        v.apply(&task(
            "finetune:slm",
            pb::TaskStateKind::TaskStateRunning,
            "",
        ));
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
        v.apply(&task("eval:a", pb::TaskStateKind::TaskStateRunning, ""));
        v.apply(&step("eval:a", 1, 10));
        v.apply(&step("eval:a", 2, 10));
        assert!(
            !out.text().contains("step 2/10"),
            "no periodic line before the interval: {}",
            out.text()
        );
        v.apply(&task(
            "eval:a",
            pb::TaskStateKind::TaskStateFailed,
            "failed 3 times; last error: a model file must be a `.gguf`",
        ));
        assert!(
            out.text()
                .contains("eval:a  FAILED on gpu0: failed 3 times")
        );
        assert_eq!(
            v.failures(),
            vec![(
                "eval:a".to_string(),
                "failed 3 times; last error: a model file must be a `.gguf`".to_string()
            )]
        );
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
        let text = failure_text(pb::ExperimentStateKind::ExperimentStateFailed, &failures);
        assert_eq!(
            text,
            "the experiment failed: 2 tasks failed\n  eval:llm: model not found: /m/x.gguf\n  finetune:slm: out of memory"
        );
        assert!(!text.contains("EXPERIMENT_STATE"));
    }

    #[test]
    fn durations_read_like_tqdm() {
        assert_eq!(duration_text(Duration::from_secs(12)), "12s");
        assert_eq!(duration_text(Duration::from_secs(245)), "4m05s");
        assert_eq!(duration_text(Duration::from_secs(3720)), "1h02m");
    }
}
