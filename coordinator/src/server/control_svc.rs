//! `ControlService`: what the CLI calls (submit, watch, status, results, results --download).
use super::{ServerError, view};
use crate::experiment::ExperimentId;
use crate::prepare::Planner;
use crate::state::status::ExperimentEvent;
use crate::state::{Command, StateHandle};
use proto::pb;
use proto::pb::control_service_server::ControlService;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub struct ControlSvc {
    pub state: StateHandle,
    pub planner: Arc<dyn Planner>,
}

type Events = Pin<Box<dyn Stream<Item = Result<pb::ExperimentEvent, Status>> + Send>>;

fn experiment_id(s: String) -> Result<ExperimentId, Status> {
    if s.is_empty() {
        Err(Status::invalid_argument("`experiment_id` is empty"))
    } else {
        Ok(ExperimentId(s))
    }
}

#[tonic::async_trait]
impl ControlService for ControlSvc {
    async fn submit(
        &self,
        req: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitReply>, Status> {
        let req = req.into_inner();
        let (text, use_cache) = (req.config_toml, !req.no_cache);
        let planner = self.planner.clone();
        let plan = tokio::task::spawn_blocking(move || planner.plan_with_cache(&text, use_cache))
            .await
            .map_err(|e| Status::internal(format!("planner: {e}")))?
            .map_err(Status::invalid_argument)?;
        let task_ids = plan.tasks.iter().map(|t| t.spec.id.0.clone()).collect();
        let id = self.state.submit(plan).await.map_err(ServerError::from)?;
        Ok(Response::new(pb::SubmitReply {
            experiment_id: id.0,
            task_ids,
        }))
    }

    type WatchStream = Events;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<Events>, Status> {
        let experiment = experiment_id(req.into_inner().experiment_id)?;
        let (snapshot, rx) = self
            .state
            .ask(|reply| Command::Watch { experiment, reply })
            .await
            .map_err(ServerError::from)?
            .map_err(ServerError::from)?;
        let done_in_snapshot = snapshot.iter().any(ExperimentEvent::is_finished);
        let head = tokio_stream::iter(snapshot.into_iter().map(|e| Ok(view::event_pb(&e))));
        let live = live_events(rx, done_in_snapshot);
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::chain(
            head, live,
        ))))
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let id = req.into_inner().experiment_id;
        let experiment = (!id.is_empty()).then_some(ExperimentId(id));
        let reply = self
            .state
            .ask(|reply| Command::Status { experiment, reply })
            .await
            .map_err(ServerError::from)?
            .map_err(ServerError::from)?;
        Ok(Response::new(view::status_pb(&reply)))
    }

    async fn results(
        &self,
        req: Request<pb::ResultsRequest>,
    ) -> Result<Response<pb::ResultsReply>, Status> {
        let experiment = experiment_id(req.into_inner().experiment_id)?;
        let name = experiment.0.clone();
        let (dir, finished) = self
            .state
            .ask(|reply| Command::Results { experiment, reply })
            .await
            .map_err(ServerError::from)?
            .map_err(ServerError::from)?;
        if !finished {
            return Err(Status::failed_precondition(format!(
                "experiment `{name}` is still running; `watch` it first"
            )));
        }
        let path = dir.join("results.json");
        let results_json = tokio::fs::read_to_string(&path)
            .await
            .map_err(|e| Status::not_found(format!("{}: {e}", path.display())))?;
        Ok(Response::new(pb::ResultsReply {
            results_json,
            output_dir: dir.display().to_string(),
        }))
    }

    type DownloadResultsStream = super::results_stream::Chunks;

    /// Only finished experiments (succeeded or failed): the output folder is written once every
    /// task ended, so a running experiment's would be empty or half written.
    async fn download_results(
        &self,
        req: Request<pb::ResultsRequest>,
    ) -> Result<Response<Self::DownloadResultsStream>, Status> {
        let experiment = experiment_id(req.into_inner().experiment_id)?;
        let name = experiment.0.clone();
        let (dir, finished) = self
            .state
            .ask(|reply| Command::Results { experiment, reply })
            .await
            .map_err(ServerError::from)?
            .map_err(ServerError::from)?;
        if !finished {
            return Err(Status::failed_precondition(format!(
                "experiment `{name}` is still running: its output folder is written once every \
                 task has ended; `watch` it first"
            )));
        }
        match tokio::fs::symlink_metadata(&dir).await {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Status::failed_precondition(format!(
                    "experiment `{name}`: its output path {} is not a folder (a symbolic link \
                     is not followed)",
                    dir.display()
                )));
            }
            Err(e) => {
                return Err(Status::not_found(format!(
                    "experiment `{name}`: output folder {}: {e}",
                    dir.display()
                )));
            }
        }
        Ok(Response::new(super::results_stream::stream_folder(dir)))
    }
}

/// Live events until the experiment's `finished` event (inclusive). A watcher that falls behind
/// by more than the channel holds is told so and the stream ends (it can `watch` again).
fn live_events(
    rx: tokio::sync::broadcast::Receiver<ExperimentEvent>,
    already_done: bool,
) -> impl Stream<Item = Result<pb::ExperimentEvent, Status>> + Send {
    use tokio::sync::broadcast::error::RecvError;
    let (tx, out) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        if already_done {
            return;
        }
        let mut rx = rx;
        loop {
            let item = match rx.recv().await {
                Ok(ev) => {
                    let done = ev.is_finished();
                    if tx.send(Ok(view::event_pb(&ev))).await.is_err() || done {
                        break;
                    }
                    continue;
                }
                Err(RecvError::Lagged(n)) => Err(Status::data_loss(format!(
                    "watcher fell {n} events behind; watch again"
                ))),
                Err(RecvError::Closed) => {
                    Err(Status::unavailable("the coordinator is shutting down"))
                }
            };
            let _ = tx.send(item).await;
            break;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(out)
}
