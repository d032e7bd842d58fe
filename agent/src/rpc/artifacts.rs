//! Adapter folders to and from the coordinator's artifact store (chunked, SHA-256 checked).
use super::RpcError;
use proto::auth::AttachToken;
use proto::limits::{ARTIFACT_CHUNK_BYTES, MAX_MESSAGE_BYTES};
use proto::pb;
use proto::pb::artifact_service_client::ArtifactServiceClient;
use sha2::{Digest, Sha256};
use std::path::Path;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// An artifact client carrying the token.
pub type Client = ArtifactServiceClient<InterceptedService<Channel, AttachToken>>;

pub fn client(channel: Channel, auth: AttachToken) -> Client {
    ArtifactServiceClient::with_interceptor(channel, auth)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Uploads every PEFT file of `dir` as `<artifact>/<file>`.
pub async fn upload_adapter(
    client: &mut Client,
    artifact: &str,
    dir: &Path,
) -> Result<(), RpcError> {
    for file in proto::ADAPTER_FILES {
        let path = dir.join(file);
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|source| RpcError::Io {
                path: path.clone(),
                source,
            })?;
        let name = format!("{artifact}/{file}");
        let header = pb::ArtifactHeader {
            name: name.clone(),
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
        };
        let mut chunks = vec![pb::ArtifactChunk {
            part: Some(pb::artifact_chunk::Part::Header(header)),
        }];
        chunks.extend(
            bytes
                .chunks(ARTIFACT_CHUNK_BYTES)
                .map(|c| pb::ArtifactChunk {
                    part: Some(pb::artifact_chunk::Part::Data(c.to_vec())),
                }),
        );
        client.upload(tokio_stream::iter(chunks)).await?;
        tracing::info!(artifact = %name, size = bytes.len(), "uploaded");
    }
    Ok(())
}

/// Downloads `<artifact>/<file>` for every PEFT file into `dir`, checking size and SHA-256.
pub async fn download_adapter(
    client: &mut Client,
    artifact: &str,
    dir: &Path,
) -> Result<(), RpcError> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|source| RpcError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    for file in proto::ADAPTER_FILES {
        let name = format!("{artifact}/{file}");
        let bad = |why: String| RpcError::Artifact {
            name: name.clone(),
            why,
        };
        let mut stream = client
            .download(pb::DownloadRequest { name: name.clone() })
            .await?
            .into_inner();
        let header = match stream.message().await?.and_then(|c| c.part) {
            Some(pb::artifact_chunk::Part::Header(h)) => h,
            _ => return Err(bad("the download did not start with a header".into())),
        };
        let mut data = Vec::with_capacity(header.size as usize);
        while let Some(c) = stream.message().await? {
            match c.part {
                Some(pb::artifact_chunk::Part::Data(d)) => data.extend_from_slice(&d),
                _ => return Err(bad("a second header mid-download".into())),
            }
        }
        let sha = hex::encode(Sha256::digest(&data));
        if data.len() as u64 != header.size || !sha.eq_ignore_ascii_case(&header.sha256) {
            return Err(bad(format!(
                "got {} bytes with SHA-256 {sha}, expected {} bytes with {}",
                data.len(),
                header.size,
                header.sha256
            )));
        }
        let path = dir.join(file);
        let p = path.clone();
        tokio::task::spawn_blocking(move || shared::fsutil::write_atomic(&p, &data))
            .await
            .map_err(|e| RpcError::Io {
                path: path.clone(),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| RpcError::Io { path, source })?;
    }
    Ok(())
}
