//! `AgentService.Session`: one long-lived stream per agent, bridged to the state owner.
use super::{ServerError, convert, view};
use crate::state::{Command, StateHandle};
use proto::pb;
use proto::pb::agent_service_server::AgentService;
use std::pin::Pin;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

pub struct AgentSvc {
    pub state: StateHandle,
}

type Out = Pin<Box<dyn Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for AgentSvc {
    type SessionStream = Out;

    async fn session(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Out>, Status> {
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("stream closed before `register`"))?;
        let Some(pb::agent_message::Msg::Register(reg)) = first.msg else {
            return Err(Status::failed_precondition(
                "the first message of a session must be `register`",
            ));
        };
        let reg = convert::registration(reg)
            .map_err(|e| Status::invalid_argument(format!("register: {e}")))?;
        let agent = reg.agent.clone();
        // Offers are few and small in number; the queue bounds memory if an agent stops reading.
        let (tx, rx) = mpsc::channel(64);
        let session = self
            .state
            .ask(|reply| Command::Register { reg, tx, reply })
            .await
            .map_err(ServerError::from)?
            .map_err(ServerError::from)?;
        let state = self.state.clone();
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(m)) => match convert::agent_event(m) {
                        Ok(Some(event)) => {
                            if state
                                .send(Command::FromAgent {
                                    agent: agent.clone(),
                                    session,
                                    event,
                                })
                                .await
                                .is_err()
                            {
                                break;
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(agent = %agent.0, error = %e, "malformed agent message ignored")
                        }
                    },
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(agent = %agent.0, error = %e, "agent stream broke");
                        break;
                    }
                }
            }
            let _ = state.send(Command::Disconnect { agent, session }).await;
        });
        let outbound = ReceiverStream::new(rx).filter_map(|msg| match view::to_agent_pb(msg) {
            Ok(m) => Some(Ok(m)),
            Err(e) => {
                tracing::error!(error = %e, "could not encode a message for an agent; dropped");
                None
            }
        });
        Ok(Response::new(Box::pin(outbound)))
    }
}
