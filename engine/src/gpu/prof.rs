//! Phase timing for finding where a step's time goes: with `SIZESPEC_PROFILE=1`, [`lap`] waits
//! for the device and charges the time since the previous lap to a named phase; [`report`] prints
//! the totals. Off (the default) it costs one atomic load per call and never synchronises.
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use candle_core::Device;

fn enabled() -> bool {
    super::switches::switches().profile
}

#[derive(Default)]
struct Laps {
    last: Option<Instant>,
    phases: BTreeMap<&'static str, (Duration, u64)>,
}

thread_local! {
    static LAPS: RefCell<Laps> = RefCell::new(Laps::default());
}

/// Start timing from now (after waiting for the device).
pub fn start(device: &Device) {
    if !enabled() {
        return;
    }
    let _ = device.synchronize();
    LAPS.with(|l| l.borrow_mut().last = Some(Instant::now()));
}

/// Charge the time since the previous lap (or [`start`]) to `phase`.
pub fn lap(device: &Device, phase: &'static str) {
    if !enabled() {
        return;
    }
    let _ = device.synchronize();
    let now = Instant::now();
    LAPS.with(|l| {
        let mut l = l.borrow_mut();
        if let Some(prev) = l.last {
            let e = l.phases.entry(phase).or_default();
            e.0 += now - prev;
            e.1 += 1;
        }
        l.last = Some(now);
    });
}

/// The totals so far, one line per phase (ms and count), then clears them; `None` when off.
pub fn report() -> Option<String> {
    if !enabled() {
        return None;
    }
    LAPS.with(|l| {
        let mut l = l.borrow_mut();
        let total: Duration = l.phases.values().map(|p| p.0).sum();
        let mut out = format!("profile: {:.1} ms in all\n", total.as_secs_f64() * 1e3);
        for (name, (d, n)) in &l.phases {
            out.push_str(&format!(
                "  {name:<24} {:>9.1} ms  {n:>5} laps  {:>5.1}%\n",
                d.as_secs_f64() * 1e3,
                100.0 * d.as_secs_f64() / total.as_secs_f64().max(1e-12)
            ));
        }
        *l = Laps::default();
        Some(out)
    })
}
