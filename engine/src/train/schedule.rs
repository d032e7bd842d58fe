//! Learning-rate schedules: linear warmup from 0, then cosine / linear decay to 0 or constant.
use shared::config::LrSchedule;

/// The learning rate at each optimiser step (0-based) of a run of `total_steps` steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub peak: f64,
    pub kind: LrSchedule,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl Schedule {
    /// `warmup_ratio` of the total steps (rounded up, as HF's `get_*_schedule_with_warmup` callers do).
    pub fn new(peak: f64, kind: LrSchedule, warmup_ratio: f64, total_steps: u64) -> Self {
        let warmup_steps =
            ((warmup_ratio.max(0.0) * total_steps as f64).ceil() as u64).min(total_steps);
        Self {
            peak,
            kind,
            warmup_steps,
            total_steps,
        }
    }

    /// The rate used for optimiser step `step` (0-based). Matches HF transformers' schedules:
    /// warmup `lr·(step/warmup)`, then cosine `lr·½(1+cos(π·progress))` or linear `lr·(1-progress)`.
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak * step as f64 / self.warmup_steps.max(1) as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        match self.kind {
            LrSchedule::Constant => self.peak,
            LrSchedule::Linear => self.peak * (1.0 - progress),
            LrSchedule::Cosine => self.peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay_shapes() {
        let s = Schedule::new(1.0, LrSchedule::Cosine, 0.1, 100);
        assert_eq!(s.warmup_steps, 10);
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(5) - 0.5).abs() < 1e-12);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        assert!(
            (s.lr(55) - 0.5).abs() < 1e-12,
            "cosine midpoint is half the peak"
        );
        assert!(s.lr(99) < 0.001 && s.lr(99) > 0.0);
        let l = Schedule::new(2.0, LrSchedule::Linear, 0.0, 10);
        assert_eq!(l.warmup_steps, 0);
        assert!((l.lr(0) - 2.0).abs() < 1e-12);
        assert!((l.lr(5) - 1.0).abs() < 1e-12);
        let c = Schedule::new(3.0, LrSchedule::Constant, 0.5, 4);
        assert_eq!((c.lr(0), c.lr(1), c.lr(2), c.lr(3)), (0.0, 1.5, 3.0, 3.0));
    }

    #[test]
    fn small_runs_round_warmup_up() {
        let s = Schedule::new(1.0, LrSchedule::Cosine, 0.03, 10);
        assert_eq!(s.warmup_steps, 1);
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(1) - 1.0).abs() < 1e-12);
    }
}
