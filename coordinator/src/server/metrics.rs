//! `GET /metrics`: a [`MetricsSnapshot`] in the OpenMetrics text format Prometheus scrapes
//! (`prometheus-client`). A fresh registry per scrape: series of an agent that left or a task that
//! stopped running disappear instead of keeping their last value.
use crate::state::metrics::{MetricsSnapshot, Rate};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

/// The `Content-Type` of [`encode_snapshot`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;
type IntGauges = Family<Labels, Gauge>;
type FloatGauges = Family<Labels, Gauge<f64, AtomicU64>>;

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Every metric, prefixed `sizespec_`.
pub fn encode_snapshot(s: &MetricsSnapshot) -> String {
    let mut reg = Registry::with_prefix("sizespec");

    let tasks = IntGauges::default();
    for t in &s.tasks {
        let labels = vec![
            ("experiment", t.experiment.clone()),
            ("state", t.state.into()),
        ];
        tasks.get_or_create(&labels).set(int(t.count));
    }
    reg.register(
        "tasks",
        "Tasks of each experiment in each state (pending, ready, offered, running, succeeded, \
         failed, cancelled)",
        tasks,
    );

    let agents: Gauge = Gauge::default();
    agents.set(int(s.agents));
    reg.register("agents_connected", "Agents with a live session", agents);
    let devices: Gauge = Gauge::default();
    devices.set(int(s.devices.len() as u64));
    reg.register(
        "devices_connected",
        "Devices (GPUs or CPUs) of the connected agents",
        devices,
    );

    let (free, used, total) = (
        IntGauges::default(),
        IntGauges::default(),
        IntGauges::default(),
    );
    for d in &s.devices {
        let labels = vec![("agent", d.agent.clone()), ("device", d.device.clone())];
        free.get_or_create(&labels).set(int(d.free_bytes));
        used.get_or_create(&labels)
            .set(int(d.total_bytes.saturating_sub(d.free_bytes)));
        total.get_or_create(&labels).set(int(d.total_bytes));
    }
    let memory_help = |what| format!("{what} memory of a device, as its agent last reported it");
    reg.register_with_unit("device_memory_free", memory_help("Free"), Unit::Bytes, free);
    reg.register_with_unit(
        "device_memory_used",
        memory_help("Used (total less free)"),
        Unit::Bytes,
        used,
    );
    reg.register_with_unit(
        "device_memory_total",
        memory_help("Total"),
        Unit::Bytes,
        total,
    );

    let (train, eval) = (FloatGauges::default(), FloatGauges::default());
    for r in &s.rates {
        let labels = vec![
            ("experiment", r.experiment.clone()),
            ("task", r.task.clone()),
        ];
        match r.rate {
            Rate::TrainTokensPerS(v) => train.get_or_create(&labels).set(v),
            Rate::EvalSamplesPerS(v) => eval.get_or_create(&labels).set(v),
        };
    }
    reg.register(
        "task_train_tokens_per_second",
        "A running finetune's training throughput at its last reported step",
        train,
    );
    reg.register(
        "task_eval_samples_per_second",
        "A running evaluation's throughput at its last progress report",
        eval,
    );

    reg.register(
        "task_retries",
        "Running tasks sent back to the queue to run again (failed with attempts left, agent \
         lost, lease expired, cancelled by a stopping agent)",
        s.tally.retries.clone(),
    );
    reg.register(
        "lease_expiries",
        "Offers or running tasks whose lease ran out (no answer, heartbeat or progress in time)",
        s.tally.lease_expiries.clone(),
    );
    reg.register_with_unit(
        "task_queue_wait",
        "Time from a task becoming ready (dependencies met or re-queued) until an agent took it",
        Unit::Seconds,
        s.tally.queue_wait.clone(),
    );

    let mut out = String::new();
    // Writing to a String cannot fail; an encoder error would be a bug in a metric's labels.
    if let Err(e) = encode(&mut out, &reg) {
        tracing::error!(error = %e, "encoding /metrics");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::metrics::{DeviceMemory, Tally, TaskCount, TaskRate};

    #[test]
    fn every_metric_is_encoded_with_its_labels_and_units() {
        let tally = Tally::default();
        tally.retries.inc();
        tally.queue_wait.observe(2.0);
        let s = MetricsSnapshot {
            tasks: vec![TaskCount {
                experiment: "e1".into(),
                state: "succeeded",
                count: 3,
            }],
            agents: 1,
            devices: vec![DeviceMemory {
                agent: "a".into(),
                device: "GPU-1".into(),
                total_bytes: 10 << 20,
                free_bytes: 4 << 20,
            }],
            rates: vec![
                TaskRate {
                    experiment: "e1".into(),
                    task: "finetune:x".into(),
                    rate: Rate::TrainTokensPerS(1234.5),
                },
                TaskRate {
                    experiment: "e1".into(),
                    task: "eval:y".into(),
                    rate: Rate::EvalSamplesPerS(7.25),
                },
            ],
            tally,
        };
        let text = encode_snapshot(&s);
        for line in [
            "sizespec_tasks{experiment=\"e1\",state=\"succeeded\"} 3",
            "sizespec_agents_connected 1",
            "sizespec_devices_connected 1",
            "sizespec_device_memory_free_bytes{agent=\"a\",device=\"GPU-1\"} 4194304",
            "sizespec_device_memory_used_bytes{agent=\"a\",device=\"GPU-1\"} 6291456",
            "sizespec_device_memory_total_bytes{agent=\"a\",device=\"GPU-1\"} 10485760",
            "sizespec_task_train_tokens_per_second{experiment=\"e1\",task=\"finetune:x\"} 1234.5",
            "sizespec_task_eval_samples_per_second{experiment=\"e1\",task=\"eval:y\"} 7.25",
            "sizespec_task_retries_total 1",
            "sizespec_lease_expiries_total 0",
            "sizespec_task_queue_wait_seconds_count 1",
            "sizespec_task_queue_wait_seconds_bucket{le=\"5.0\"} 1",
            "sizespec_task_queue_wait_seconds_bucket{le=\"1.0\"} 0",
            "# UNIT sizespec_task_queue_wait_seconds seconds",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
    }
}
