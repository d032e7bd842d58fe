//! `ArtifactService`: chunked, SHA-256-checked adapter uploads and downloads.
use crate::artifacts::{ArtifactError, ArtifactName, ArtifactStore, ArtifactWriter, sha256_hex};
use proto::limits::{ARTIFACT_CHUNK_BYTES, MAX_ARTIFACT_BYTES};
use proto::pb;
use proto::pb::artifact_service_server::ArtifactService;
use std::pin::Pin;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

pub struct ArtifactSvc {
    pub store: ArtifactStore,
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

/// Drops an unfinished upload off the async threads (dropping removes its temp file).
fn discard(writer: ArtifactWriter) {
    tokio::task::spawn_blocking(move || drop(writer));
}

#[tonic::async_trait]
impl ArtifactService for ArtifactSvc {
    async fn upload(
        &self,
        req: Request<Streaming<pb::ArtifactChunk>>,
    ) -> Result<Response<pb::UploadReply>, Status> {
        use pb::artifact_chunk::Part;
        let mut inbound = req.into_inner();
        let header = match inbound.message().await?.and_then(|c| c.part) {
            Some(Part::Header(h)) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "an upload must start with an `ArtifactHeader`",
                ));
            }
        };
        let name = ArtifactName::parse(&header.name)?;
        if header.size > MAX_ARTIFACT_BYTES {
            return Err(ArtifactError::TooLarge {
                name: header.name,
                size: header.size,
                max: MAX_ARTIFACT_BYTES,
            }
            .into());
        }
        // Each chunk goes to the artifact's temp file as it arrives (nothing is buffered whole).
        let store = self.store.clone();
        let (size, sha) = (header.size, header.sha256.clone());
        let n = name.clone();
        let mut writer = blocking(move || store.begin(&n, size, &sha)).await?;
        loop {
            let chunk = match inbound.message().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => {
                    discard(writer);
                    return Err(e);
                }
            };
            let Some(Part::Data(bytes)) = chunk.part else {
                discard(writer);
                return Err(Status::invalid_argument(format!(
                    "artifact `{}`: a second header mid-upload",
                    header.name
                )));
            };
            writer = blocking(move || writer.write(&bytes).map(|()| writer)).await?;
        }
        blocking(move || writer.finish()).await?;
        tracing::info!(artifact = %name, size, "artifact stored");
        Ok(Response::new(pb::UploadReply {
            name: header.name,
            size: header.size,
            sha256: header.sha256,
        }))
    }

    type DownloadStream = Chunks;

    async fn download(
        &self,
        req: Request<pb::DownloadRequest>,
    ) -> Result<Response<Chunks>, Status> {
        use pb::artifact_chunk::Part;
        let name = ArtifactName::parse(&req.into_inner().name)?;
        let store = self.store.clone();
        let n = name.clone();
        let data = blocking(move || store.get(&n)).await?;
        let header = pb::ArtifactHeader {
            name: name.to_string(),
            size: data.len() as u64,
            sha256: sha256_hex(&data),
        };
        let mut chunks = vec![Ok(pb::ArtifactChunk {
            part: Some(Part::Header(header)),
        })];
        chunks.extend(data.chunks(ARTIFACT_CHUNK_BYTES).map(|c| {
            Ok(pb::ArtifactChunk {
                part: Some(Part::Data(c.to_vec())),
            })
        }));
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }
}
