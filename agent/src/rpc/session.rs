//! One agent's life: connect, register, heartbeat, take offers one at a time, reconnect with
//! exponential backoff; on shutdown, cancel the running job (it checkpoints) and report it.
use super::runner::{RunEvent, RunJob, TaskRunner};
use super::{Connection, RpcError, artifacts, checkpoints, convert};
use crate::probe::Probe;
use proto::auth::AttachToken;
use proto::limits::{MAX_MESSAGE_BYTES, MAX_PREDICTION_BATCH};
use proto::pb;
use proto::pb::agent_message::Msg;
use proto::pb::agent_service_client::AgentServiceClient;
use shared::task::{AgentId, EvalPayload, FinetunePayload, TaskKind, TaskSpec};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Who this agent is and where it works.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub agent_id: AgentId,
    pub host: String,
    pub connection: Connection,
    /// Adapters (trained here or downloaded) live under `<work_dir>/adapters/`.
    pub work_dir: PathBuf,
}

/// Adapter artifacts available locally (trained here or downloaded): name → folder. A std mutex:
/// held only for a lookup or insert, never across an await.
type LocalAdapters = Arc<Mutex<HashMap<String, PathBuf>>>;

const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Runs until `shutdown`; reconnects whenever the session ends. Only a refused token stops it.
pub async fn run(
    cfg: AgentConfig,
    probe: Arc<dyn Probe>,
    runner: Arc<dyn TaskRunner>,
    shutdown: CancellationToken,
) -> Result<(), RpcError> {
    let adapters: LocalAdapters = Arc::default();
    let mut backoff = BACKOFF_START;
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let mut registered = false;
        match session(&cfg, &probe, &runner, &adapters, &shutdown, &mut registered).await {
            Ok(()) if shutdown.is_cancelled() => return Ok(()),
            Ok(()) => tracing::warn!("coordinator closed the session; reconnecting"),
            Err(RpcError::Status(s)) if s.code() == tonic::Code::Unauthenticated => {
                return Err(RpcError::Status(s));
            }
            Err(e) => tracing::warn!(error = %e, ?backoff, "session failed; retrying"),
        }
        if registered {
            backoff = BACKOFF_START;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

struct Current {
    task: pb::TaskRef,
    cancel: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

fn msg(m: Msg) -> pb::AgentMessage {
    pb::AgentMessage { msg: Some(m) }
}

async fn session(
    cfg: &AgentConfig,
    probe: &Arc<dyn Probe>,
    runner: &Arc<dyn TaskRunner>,
    adapters: &LocalAdapters,
    shutdown: &CancellationToken,
    registered: &mut bool,
) -> Result<(), RpcError> {
    let channel = cfg.connection.channel().await?;
    let auth = AttachToken(cfg.connection.token.clone());
    let mut client = AgentServiceClient::with_interceptor(channel.clone(), auth.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let device = probe.device()?;
    let (out, out_rx) = mpsc::channel::<pb::AgentMessage>(256);
    let register = pb::Register {
        agent_id: cfg.agent_id.0.clone(),
        host: cfg.host.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        devices: vec![convert::device(&device)],
    };
    out.send(msg(Msg::Register(register)))
        .await
        .map_err(|_| RpcError::Protocol("outbound queue closed".into()))?;
    let mut inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(out_rx))
        .await?
        .into_inner();
    let interval = match inbound.message().await?.and_then(|m| m.msg) {
        Some(pb::coordinator_message::Msg::Registered(r)) => {
            Duration::from_millis(u64::from(r.heartbeat_interval_ms.max(50)))
        }
        other => {
            return Err(RpcError::Protocol(format!(
                "expected `registered`, got {other:?}"
            )));
        }
    };
    *registered = true;
    tracing::info!(agent = %cfg.agent_id.0, device = %device.name, free_mib = device.free_mib, "registered");
    let ctx = TaskCtx {
        out: out.clone(),
        artifacts: artifacts::client(channel, auth),
        runner: runner.clone(),
        adapters: adapters.clone(),
        work_dir: cfg.work_dir.clone(),
    };
    let mut current: Option<Current> = None;
    let mut heartbeat = tokio::time::interval(interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = heartbeat.tick() => {
                let free = probe.device().map_or(0, |d| d.free_mib);
                let hb = pb::Heartbeat {
                    devices: vec![pb::DeviceMemory { uuid: device.uuid.clone(), free_mib: free }],
                    running: current.iter().map(|c| c.task.clone()).collect(),
                };
                if out.send(msg(Msg::Heartbeat(hb))).await.is_err() {
                    break Err(RpcError::Protocol("outbound stream closed".into()));
                }
            }
            _ = async { (&mut current.as_mut().expect("guarded").done).await }, if current.is_some() => {
                current = None;
            }
            m = inbound.message() => match m {
                Ok(Some(pb::CoordinatorMessage { msg: Some(m) })) => match m {
                    pb::coordinator_message::Msg::Offer(offer) => {
                        let (reply, start) = take_offer(offer, probe, current.as_ref());
                        // The accept is queued before the job starts, so everything the job sends
                        // (progress, or the result of a failure within milliseconds) follows it on
                        // the stream: the coordinator never hears of a task it has not seen accepted.
                        if out.send(msg(Msg::OfferReply(reply))).await.is_err() {
                            break Err(RpcError::Protocol("outbound stream closed".into()));
                        }
                        if let Some((offer, r)) = start {
                            current = Some(start_task(offer, r, &ctx));
                        }
                    }
                    pb::coordinator_message::Msg::Cancel(c) => {
                        if let (Some(cur), Some(t)) = (&current, &c.task)
                            && cur.task.experiment_id == t.experiment_id
                            && cur.task.task_id == t.task_id
                        {
                            tracing::warn!(task = %t.task_id, reason = %c.reason, "coordinator cancelled the task");
                            cur.cancel.cancel();
                        }
                    }
                    pb::coordinator_message::Msg::Registered(_) => {}
                },
                Ok(Some(_)) => {}
                Ok(None) => break Ok(()),
                Err(e) => break Err(e.into()),
            },
        }
    };
    // Session over (shutdown or lost): the job's result could not be delivered on a new session
    // (the coordinator re-queues it), so stop it; on shutdown it checkpoints and reports `cancelled`.
    if let Some(c) = current.take() {
        c.cancel.cancel();
        let _ = c.done.await;
    }
    // Close our side, then read until the coordinator closes its side: dropping the call early
    // would reset the stream and lose the queued `cancelled` report.
    drop(out);
    drop(ctx);
    if result.is_ok() {
        let drain = async { while let Ok(Some(_)) = inbound.message().await {} };
        let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
    }
    result
}

/// Everything a task's execution needs.
#[derive(Clone)]
struct TaskCtx {
    out: mpsc::Sender<pb::AgentMessage>,
    artifacts: artifacts::Client,
    runner: Arc<dyn TaskRunner>,
    adapters: LocalAdapters,
    work_dir: PathBuf,
}

/// Accepts or declines an offer after re-reading free memory. An accepted offer comes back with
/// what [`start_task`] needs; the caller starts it only once the accept is queued.
fn take_offer(
    offer: pb::TaskOffer,
    probe: &Arc<dyn Probe>,
    current: Option<&Current>,
) -> (pb::OfferReply, Option<(pb::TaskOffer, pb::TaskRef)>) {
    let task_id = offer
        .task
        .as_ref()
        .map(|t| t.id.clone())
        .unwrap_or_default();
    let r = pb::TaskRef {
        experiment_id: offer.experiment_id.clone(),
        task_id,
        attempt: offer.attempt,
    };
    let free = probe.free_mib().unwrap_or(0);
    let reply = |accept: bool, reason: String| pb::OfferReply {
        task: Some(r.clone()),
        accept,
        reason,
        free_mib: free,
    };
    if let Some(c) = current {
        return (
            reply(false, format!("busy with `{}`", c.task.task_id)),
            None,
        );
    }
    let estimate = offer.task.as_ref().map_or(0, |t| t.estimate_mib);
    if free < estimate {
        let why = format!("needs {estimate} MiB, {free} MiB free");
        return (reply(false, why), None);
    }
    (reply(true, String::new()), Some((offer, r.clone())))
}

/// Starts an accepted task on its own tokio task.
fn start_task(offer: pb::TaskOffer, r: pb::TaskRef, ctx: &TaskCtx) -> Current {
    let cancel = CancellationToken::new();
    let done = tokio::spawn(execute(offer, r.clone(), ctx.clone(), cancel.clone()));
    Current {
        task: r,
        cancel,
        done,
    }
}

/// File-name-safe form of a task id (`finetune:SLM_Qwen-3B` → `finetune_SLM_Qwen-3B`).
fn stem(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Runs one accepted task and reports its result; never panics the session.
async fn execute(
    offer: pb::TaskOffer,
    r: pb::TaskRef,
    mut ctx: TaskCtx,
    cancel: CancellationToken,
) {
    use pb::task_result::Outcome;
    let (outcome, permanent) = match run_task(offer, &r, &mut ctx, cancel).await {
        Ok(o) => (o, false),
        Err(f) => (Outcome::Failed(f.why), f.permanent),
    };
    let _ = ctx
        .out
        .send(msg(Msg::Result(pb::TaskResult {
            task: Some(r),
            outcome: Some(outcome),
            permanent,
        })))
        .await;
}

/// Why a task did not finish; `permanent` when a retry would fail the same way.
struct Failure {
    why: String,
    permanent: bool,
}

impl From<String> for Failure {
    fn from(why: String) -> Self {
        Failure {
            why,
            permanent: false,
        }
    }
}

impl From<&str> for Failure {
    fn from(why: &str) -> Self {
        why.to_string().into()
    }
}

async fn run_task(
    offer: pb::TaskOffer,
    r: &pb::TaskRef,
    ctx: &mut TaskCtx,
    cancel: CancellationToken,
) -> Result<pb::task_result::Outcome, Failure> {
    use pb::task_result::Outcome;
    let spec: TaskSpec = offer
        .task
        .ok_or("offer without a task")?
        .try_into()
        .map_err(|e| format!("offer: {e}"))?;
    let artifact = format!(
        "{}/{}-a{}",
        stem(&offer.experiment_id),
        stem(&spec.id.0),
        offer.attempt
    );
    let job = match spec.kind {
        TaskKind::Evaluate => {
            let payload: EvalPayload = serde_json::from_slice(&offer.payload_json)
                .map_err(|e| format!("eval payload: {e}"))?;
            let adapter_dir = match &payload.adapter {
                None => None,
                Some(name) => Some(local_adapter(ctx, name).await.map_err(|e| e.to_string())?),
            };
            RunJob::Evaluate {
                task: spec,
                payload,
                adapter_dir,
            }
        }
        TaskKind::Finetune => {
            let payload: FinetunePayload = serde_json::from_slice(&offer.payload_json)
                .map_err(|e| format!("finetune payload: {e}"))?;
            let out_dir = ctx.work_dir.join("adapters").join(&artifact);
            if let Some(from) = &offer.resume {
                fetch_checkpoint(ctx, from, &out_dir).await;
            }
            RunJob::Finetune {
                task: spec,
                payload,
                out_dir,
            }
        }
    };
    let mut events = ctx.runner.run(job, cancel);
    while let Some(ev) = events.recv().await {
        let send = |m: Msg| ctx.out.send(msg(m));
        match ev {
            RunEvent::Progress(p) => {
                let _ = send(Msg::Progress(pb::TaskProgress {
                    task: Some(r.clone()),
                    event: Some((&p).into()),
                }))
                .await;
            }
            RunEvent::Predictions(rows) => {
                for chunk in rows.chunks(MAX_PREDICTION_BATCH) {
                    let batch = pb::PredictionBatch {
                        task: Some(r.clone()),
                        rows: chunk.iter().map(Into::into).collect(),
                    };
                    let _ = send(Msg::Predictions(batch)).await;
                }
            }
            RunEvent::Checkpoint { dir, step, epoch } => {
                let name = format!("{artifact}/checkpoint-{step}");
                match checkpoints::upload(&mut ctx.artifacts, &name, &dir).await {
                    Ok(()) => {
                        tracing::info!(artifact = %name, step, "checkpoint uploaded");
                        let _ = send(Msg::Checkpoint(pb::CheckpointSaved {
                            task: Some(r.clone()),
                            artifact: name,
                            step,
                            epoch,
                        }))
                        .await;
                    }
                    // Training goes on; a re-queued task resumes from an earlier checkpoint.
                    Err(e) => {
                        tracing::warn!(artifact = %name, error = %e, "checkpoint upload failed")
                    }
                }
                if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
                    tracing::warn!(dir = %dir.display(), error = %e, "could not remove a staged checkpoint");
                }
            }
            RunEvent::Evaluated(rep) => {
                return Ok(Outcome::Evaluated(convert::eval_performance(&rep)));
            }
            RunEvent::Finetuned(rep) => {
                artifacts::upload_adapter(&mut ctx.artifacts, &artifact, &rep.adapter_dir)
                    .await
                    .map_err(|e| e.to_string())?;
                ctx.adapters
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(artifact.clone(), rep.adapter_dir.clone());
                return Ok(Outcome::Finetuned(convert::training_summary(
                    &rep, artifact,
                )));
            }
            RunEvent::Failed(why) => return Ok(Outcome::Failed(why)),
            RunEvent::Rejected(why) => {
                return Err(Failure {
                    why,
                    permanent: true,
                });
            }
            RunEvent::Cancelled => return Ok(Outcome::Cancelled("cancelled on the agent".into())),
        }
    }
    Err("the worker stopped without a result".into())
}

/// Downloads the offer's checkpoint into `out_dir/checkpoint`, where the finetune resumes from it.
/// A checkpoint that cannot be fetched is logged and the run starts from step 0 (its result then
/// says it did not resume): slower, never wrong.
async fn fetch_checkpoint(ctx: &mut TaskCtx, from: &pb::ResumeFrom, out_dir: &std::path::Path) {
    let dir = out_dir.join(engine::train::checkpoint::CHECKPOINT_DIR);
    let staging = out_dir.join("checkpoint-download");
    match checkpoints::download(&mut ctx.artifacts, &from.artifact, &staging, &dir).await {
        Ok(()) => tracing::info!(
            artifact = %from.artifact,
            step = from.step,
            written_by = %from.agent_id,
            "resuming from checkpoint"
        ),
        Err(e) => {
            tracing::warn!(artifact = %from.artifact, error = %e, "could not fetch the checkpoint; training from step 0");
            let _ = tokio::fs::remove_dir_all(&dir).await;
            let _ = tokio::fs::remove_dir_all(&staging).await;
        }
    }
}

/// The adapter's local folder: the one this agent trained, or a fresh download.
async fn local_adapter(ctx: &mut TaskCtx, name: &str) -> Result<PathBuf, RpcError> {
    if let Some(dir) = ctx
        .adapters
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(name)
        .cloned()
    {
        return Ok(dir);
    }
    let dir = ctx.work_dir.join("downloads").join(name);
    artifacts::download_adapter(&mut ctx.artifacts, name, &dir).await?;
    ctx.adapters
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name.to_string(), dir.clone());
    Ok(dir)
}
