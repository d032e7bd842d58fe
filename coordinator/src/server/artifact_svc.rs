//! `ArtifactService`: chunked, SHA-256-checked adapter uploads and downloads. Uploads stream into
//! a temp file beside the artifact (never held whole in memory), under [`UploadLimits`]: a size
//! cap checked against the announced size and the bytes received, a bound on concurrent uploads,
//! and an idle timeout so a stalled client cannot hold a slot.
use crate::artifacts::{ArtifactError, ArtifactName, ArtifactStore};
use proto::limits::{ARTIFACT_CHUNK_BYTES, MAX_ARTIFACT_BYTES};
use proto::pb;
use proto::pb::artifact_service_server::ArtifactService;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// Bounds on artifact uploads (`coordinator serve --max-artifact-mib / --max-uploads`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadLimits {
    /// Largest artifact file accepted, bytes.
    pub max_bytes: u64,
    /// Uploads written at once; further ones wait for a slot.
    pub concurrent: usize,
    /// How long an upload waits for a slot before it is refused (`RESOURCE_EXHAUSTED`).
    pub slot_wait: Duration,
    /// How long an upload may go without a chunk before it is dropped (`DEADLINE_EXCEEDED`).
    pub idle: Duration,
}

impl Default for UploadLimits {
    fn default() -> Self {
        UploadLimits {
            max_bytes: MAX_ARTIFACT_BYTES,
            concurrent: 4,
            // An adapter upload over a LAN takes seconds; a queue of a few such uploads, minutes.
            slot_wait: Duration::from_secs(300),
            idle: Duration::from_secs(120),
        }
    }
}

pub struct ArtifactSvc {
    store: ArtifactStore,
    limits: UploadLimits,
    slots: Semaphore,
}

impl ArtifactSvc {
    pub fn new(store: ArtifactStore, limits: UploadLimits) -> ArtifactSvc {
        let slots = Semaphore::new(limits.concurrent.max(1));
        ArtifactSvc {
            store,
            limits,
            slots,
        }
    }

    /// The next message of an upload, or `DEADLINE_EXCEEDED` after [`UploadLimits::idle`].
    async fn next(
        &self,
        inbound: &mut Streaming<pb::ArtifactChunk>,
        name: &str,
    ) -> Result<Option<pb::ArtifactChunk>, Status> {
        let idle = self.limits.idle;
        tokio::time::timeout(idle, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "artifact upload `{name}`: no data for {} s; upload again",
                    idle.as_secs_f64()
                ))
            })?
    }
}

type Chunks = Pin<Box<dyn Stream<Item = Result<pb::ArtifactChunk, Status>> + Send>>;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ArtifactError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("artifact worker: {e}")))?
        .map_err(Status::from)
}

#[tonic::async_trait]
impl ArtifactService for ArtifactSvc {
    async fn upload(
        &self,
        req: Request<Streaming<pb::ArtifactChunk>>,
    ) -> Result<Response<pb::UploadReply>, Status> {
        use pb::artifact_chunk::Part;
        let mut inbound = req.into_inner();
        let header = match self.next(&mut inbound, "?").await?.and_then(|c| c.part) {
            Some(Part::Header(h)) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "an upload must start with an `ArtifactHeader`",
                ));
            }
        };
        let name = ArtifactName::parse(&header.name)?;
        let max = self.limits.max_bytes;
        if header.size > max {
            return Err(ArtifactError::TooLarge {
                name: header.name,
                size: header.size,
                max,
            }
            .into());
        }
        let wait = self.limits.slot_wait;
        let _slot = match tokio::time::timeout(wait, self.slots.acquire()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_closed)) => return Err(Status::unavailable("the artifact store is closed")),
            Err(_) => {
                return Err(Status::resource_exhausted(format!(
                    "artifact `{name}`: {} uploads are already in progress (the limit, \
                     `coordinator serve --max-uploads`) and none ended within {} s; upload again later",
                    self.limits.concurrent.max(1),
                    wait.as_secs_f64()
                )));
            }
        };
        // Each chunk goes to the artifact's temp file as it arrives (nothing is buffered whole): a
        // blocking thread writes and hashes while the next chunks are received. Refused (temp
        // file removed) as soon as the bytes pass the announced size, which is at most the cap.
        // On an early return the channel closes and the thread drops the writer, which removes
        // the temp file.
        let store = self.store.clone();
        let (size, sha) = (header.size, header.sha256.clone());
        let n = name.clone();
        let mut writer = blocking(move || store.begin(&n, size, &sha)).await?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<proto::Bytes>(4);
        let disk = tokio::task::spawn_blocking(move || {
            while let Some(bytes) = rx.blocking_recv() {
                writer.write(&bytes)?;
            }
            Ok::<_, ArtifactError>(writer)
        });
        loop {
            let Some(chunk) = self.next(&mut inbound, &header.name).await? else {
                break;
            };
            let Some(Part::Data(bytes)) = chunk.part else {
                return Err(Status::invalid_argument(format!(
                    "artifact `{}`: a second header mid-upload",
                    header.name
                )));
            };
            // A closed channel means the disk side failed: its error is returned below.
            if tx.send(bytes).await.is_err() {
                break;
            }
        }
        drop(tx);
        let writer = disk
            .await
            .map_err(|e| Status::internal(format!("artifact worker: {e}")))??;
        blocking(move || writer.finish()).await?;
        tracing::info!(artifact = %name, size, "artifact stored");
        Ok(Response::new(pb::UploadReply {
            name: header.name,
            size: header.size,
            sha256: header.sha256,
        }))
    }

    type DownloadStream = Chunks;

    /// The header (size and SHA-256 from one pass over the file), then the file in chunks read
    /// as the client takes them: a few chunks in memory at a time, whatever the artifact's size.
    async fn download(
        &self,
        req: Request<pb::DownloadRequest>,
    ) -> Result<Response<Chunks>, Status> {
        use pb::artifact_chunk::Part;
        let name = ArtifactName::parse(&req.into_inner().name)?;
        let store = self.store.clone();
        let n = name.clone();
        let mut reader = blocking(move || store.open(&n)).await?;
        let header = pb::ArtifactHeader {
            name: name.to_string(),
            size: reader.size,
            sha256: reader.sha256.clone(),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let head = pb::ArtifactChunk {
                part: Some(Part::Header(header)),
            };
            if tx.blocking_send(Ok(head)).is_err() {
                return;
            }
            loop {
                let item = match reader.next_chunk(ARTIFACT_CHUNK_BYTES) {
                    Ok(Some(bytes)) => Ok(pb::ArtifactChunk {
                        part: Some(Part::Data(bytes.into())),
                    }),
                    Ok(None) => return,
                    Err(e) => Err(Status::from(e)),
                };
                let stop = item.is_err();
                // A receiver gone means the client hung up: stop reading.
                if tx.blocking_send(item).is_err() || stop {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
