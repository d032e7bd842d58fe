//! The coordinator's state has one owner: the task [`spawn`] starts reads [`Command`]s from a
//! channel, applies them to [`core::Core`] and carries out the effects (journal writes on the
//! blocking pool, awaited; finished experiments' output folders handed to the output writer, which
//! reports back when one is written; messages to agents; watcher events). Everything else talks
//! to it through a [`StateHandle`].
mod accept;
mod checkpoint;
#[cfg(test)]
mod checkpoint_tests;
pub mod core;
#[cfg(test)]
mod fault_tests;
pub mod live;
pub mod metrics;
mod sched;
pub mod status;
mod task;
#[cfg(test)]
mod tests;
mod types;
pub mod wait;

use self::core::{Core, CoreError, Io, OfferAnswer, Outcome, Registration, TaskRef, ToAgent};
use self::status::{ExperimentEvent, StatusReport};
use crate::experiment::{ExperimentId, ExperimentPlan};
use crate::journal::Journal;
use crate::outputs::{OutputsInput, writer};
use shared::task::{AgentId, PredictionRow, ProgressEvent};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Where the state owner sends an agent's messages (the agent's session encodes them).
pub type AgentTx = mpsc::Sender<ToAgent>;

/// An agent's message, decoded.
#[derive(Debug)]
pub enum AgentEvent {
    Heartbeat {
        free: Vec<(String, u64)>,
        running: Vec<TaskRef>,
    },
    OfferReply {
        task: TaskRef,
        answer: OfferAnswer,
    },
    Progress {
        task: TaskRef,
        event: ProgressEvent,
    },
    Predictions {
        task: TaskRef,
        rows: Vec<PredictionRow>,
    },
    Result {
        task: TaskRef,
        outcome: Outcome,
    },
    /// A finetune checkpoint is stored in full.
    Checkpoint {
        task: TaskRef,
        checkpoint: self::core::SavedCheckpoint,
    },
}

/// A watcher's start: the current task states, then live events.
pub type WatchStart = (Vec<ExperimentEvent>, broadcast::Receiver<ExperimentEvent>);

/// Requests to the state owner.
#[derive(Debug)]
pub enum Command {
    Submit {
        plan: Box<ExperimentPlan>,
        reply: oneshot::Sender<ExperimentId>,
    },
    Register {
        reg: Registration,
        tx: AgentTx,
        reply: oneshot::Sender<Result<u64, CoreError>>,
    },
    Disconnect {
        agent: AgentId,
        session: u64,
    },
    FromAgent {
        agent: AgentId,
        session: u64,
        event: AgentEvent,
    },
    Status {
        experiment: Option<ExperimentId>,
        reply: oneshot::Sender<Result<StatusReport, CoreError>>,
    },
    Watch {
        experiment: ExperimentId,
        reply: oneshot::Sender<Result<WatchStart, CoreError>>,
    },
    /// The live page's snapshot and the followed experiment's output folder.
    Live {
        reply: oneshot::Sender<(crate::report::live::LiveState, Option<PathBuf>)>,
    },
    /// The numbers `/metrics` reports.
    Metrics {
        reply: oneshot::Sender<metrics::MetricsSnapshot>,
    },
    /// The output folder and whether the experiment has finished.
    Results {
        experiment: ExperimentId,
        reply: oneshot::Sender<Result<(PathBuf, bool), CoreError>>,
    },
}

/// The state owner is gone (the coordinator is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the coordinator is shutting down")]
pub struct Closed;

/// Cheap to clone; every call is a message to the owner.
#[derive(Debug, Clone)]
pub struct StateHandle {
    tx: mpsc::Sender<Command>,
}

impl StateHandle {
    pub async fn send(&self, cmd: Command) -> Result<(), Closed> {
        self.tx.send(cmd).await.map_err(|_| Closed)
    }

    /// Sends a command built around a reply channel and waits for the answer.
    pub async fn ask<T>(
        &self,
        build: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Closed> {
        let (tx, rx) = oneshot::channel();
        self.send(build(tx)).await?;
        rx.await.map_err(|_| Closed)
    }

    pub async fn submit(&self, plan: ExperimentPlan) -> Result<ExperimentId, Closed> {
        self.ask(|reply| Command::Submit {
            plan: Box::new(plan),
            reply,
        })
        .await
    }
}

/// Starts the owner task: restores the journal, then serves commands until `shutdown`.
pub fn spawn(
    core: Core,
    journal: Journal,
    shutdown: CancellationToken,
) -> (StateHandle, tokio::task::JoinHandle<()>) {
    spawn_with_writer(core, journal, writer::default_write(), shutdown)
}

/// [`spawn`] with the function that writes output folders (tests hold or observe it).
pub fn spawn_with_writer(
    mut core: Core,
    journal: Journal,
    write: writer::WriteFn,
    shutdown: CancellationToken,
) -> (StateHandle, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Command>(1024);
    let handle = tokio::spawn(async move {
        let j = journal.clone();
        match tokio::task::spawn_blocking(move || j.load_all()).await {
            Ok(Ok(restored)) => {
                for r in restored {
                    core.restore(r, Instant::now());
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "could not read the journal; starting empty"),
            Err(e) => tracing::error!(error = %e, "journal reader panicked"),
        }
        let (outputs, mut written) = writer::spawn(write);
        let mut owner = Owner {
            core,
            journal,
            outputs,
            agents: HashMap::new(),
            watchers: HashMap::new(),
        };
        owner.apply_effects().await;
        let mut tick = tokio::time::interval(owner.core.settings.heartbeat_interval / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => owner.handle(cmd),
                    None => break,
                },
                Some(done) = written.recv() => {
                    owner.core.outputs_written(&done.experiment, done.result);
                }
                _ = tick.tick() => owner.core.tick(Instant::now()),
                _ = shutdown.cancelled() => break,
            }
            owner.apply_effects().await;
        }
        tracing::info!("state owner stopped");
    });
    (StateHandle { tx }, handle)
}

struct Owner {
    core: Core,
    journal: Journal,
    /// Output folders for the writer (it reports back through the owner's loop).
    outputs: mpsc::UnboundedSender<Box<OutputsInput>>,
    agents: HashMap<AgentId, (u64, AgentTx)>,
    watchers: HashMap<ExperimentId, broadcast::Sender<ExperimentEvent>>,
}

impl Owner {
    fn handle(&mut self, cmd: Command) {
        let now = Instant::now();
        match cmd {
            Command::Submit { plan, reply } => {
                let id = self.core.submit(*plan, now);
                let _ = reply.send(id);
            }
            Command::Register { reg, tx, reply } => {
                let agent = reg.agent.clone();
                // The previous session's stream is closed (its disconnect not handled yet): it is
                // gone, so this registration takes its place.
                if let Some((session, old)) = self.agents.get(&agent)
                    && old.is_closed()
                {
                    let session = *session;
                    self.agents.remove(&agent);
                    self.core.disconnect(&agent, session, now);
                }
                let res = self.core.register(reg, now);
                if let Ok(session) = res {
                    // Sent here, before this command's effects, so `registered` precedes any offer.
                    let _ = tx.try_send(ToAgent::Registered {
                        agent: agent.clone(),
                        heartbeat_interval: self.core.settings.heartbeat_interval,
                    });
                    self.agents.insert(agent, (session, tx));
                }
                let _ = reply.send(res);
            }
            Command::Disconnect { agent, session } => {
                if self.agents.get(&agent).is_some_and(|(s, _)| *s == session) {
                    self.agents.remove(&agent);
                }
                self.core.disconnect(&agent, session, now);
            }
            Command::FromAgent {
                agent,
                session,
                event,
            } => {
                let res = match event {
                    AgentEvent::Heartbeat { free, running } => {
                        self.core.heartbeat(&agent, session, &free, &running, now);
                        Ok(())
                    }
                    AgentEvent::OfferReply { task, answer } => {
                        self.core.offer_reply(&agent, session, &task, answer, now)
                    }
                    AgentEvent::Progress { task, event } => {
                        self.core.progress(&agent, session, &task, event, now);
                        Ok(())
                    }
                    AgentEvent::Predictions { task, rows } => {
                        self.core.predictions(&agent, session, &task, rows, now);
                        Ok(())
                    }
                    AgentEvent::Result { task, outcome } => {
                        self.core.result(&agent, session, &task, outcome, now)
                    }
                    AgentEvent::Checkpoint { task, checkpoint } => {
                        self.core
                            .checkpoint(&agent, session, &task, checkpoint, now);
                        Ok(())
                    }
                };
                if let Err(e) = res {
                    tracing::error!(agent = %agent.0, error = %e, "agent message refused");
                }
            }
            Command::Status { experiment, reply } => {
                let _ = reply.send(status::status(&self.core, experiment.as_ref()));
            }
            Command::Watch { experiment, reply } => {
                let res = match self.core.experiment(&experiment) {
                    None => Err(CoreError::UnknownExperiment(experiment.0.clone())),
                    Some(e) => {
                        let snapshot = status::snapshot_events(e);
                        let rx = self
                            .watchers
                            .entry(experiment)
                            .or_insert_with(|| broadcast::channel(1024).0)
                            .subscribe();
                        Ok((snapshot, rx))
                    }
                };
                let _ = reply.send(res);
            }
            Command::Live { reply } => {
                let _ = reply.send(live::live_state(
                    &self.core,
                    crate::outputs::results::now_rfc3339(),
                ));
            }
            Command::Metrics { reply } => {
                let _ = reply.send(metrics::snapshot(&self.core));
            }
            Command::Results { experiment, reply } => {
                let res = match self.core.experiment(&experiment) {
                    None => Err(CoreError::UnknownExperiment(experiment.0.clone())),
                    Some(e) => Ok((e.plan.output_dir.clone(), e.is_finished())),
                };
                let _ = reply.send(res);
            }
        }
    }

    /// Journal first (a batch is durable before anyone hears of it), then output folders to the
    /// writer, then agents, then watchers. Only the journal writes are awaited.
    async fn apply_effects(&mut self) {
        let fx = self.core.take_effects();
        if !fx.io.is_empty() {
            let journal = self.journal.clone();
            let res = tokio::task::spawn_blocking(move || {
                for op in fx.io {
                    let r = match op {
                        Io::SavePlan(p) => journal.save_plan(&p).map_err(|e| e.to_string()),
                        Io::SaveState(id, s) => {
                            journal.save_state(&id, &s).map_err(|e| e.to_string())
                        }
                        Io::AppendPredictions(id, t, rows) => journal
                            .append_predictions(&id, &t, &rows)
                            .map_err(|e| e.to_string()),
                    };
                    if let Err(e) = r {
                        tracing::error!(error = %e, "journal write failed");
                    }
                }
            })
            .await;
            if let Err(e) = res {
                tracing::error!(error = %e, "journal writer panicked");
            }
        }
        for job in fx.outputs {
            if self.outputs.send(job).is_err() {
                tracing::error!("the output writer stopped; outputs not written");
            }
        }
        for (agent, session, msg) in fx.to_agents {
            let Some((s, tx)) = self.agents.get(&agent) else {
                continue;
            };
            if *s != session {
                continue;
            }
            // Never block the owner on one slow agent: a full queue means it is not reading, and
            // its lease will expire.
            if let Err(e) = tx.try_send(msg) {
                tracing::warn!(agent = %agent.0, error = %e, "agent queue full or closed; message dropped");
            }
        }
        for n in fx.notices {
            let Some(ev) = status::notice_event(&self.core, &n) else {
                continue;
            };
            if let Some(w) = self.watchers.get(&ev_experiment(&n)) {
                let _ = w.send(ev);
            }
        }
    }
}

fn ev_experiment(n: &core::Notice) -> ExperimentId {
    match n {
        core::Notice::Task(e, _)
        | core::Notice::Progress(e, _, _)
        | core::Notice::Finished(e, _) => e.clone(),
    }
}
