//! Files (adapter folders, checkpoint parts) to and from the coordinator's artifact store
//! (chunked, SHA-256 checked).
//! Files stream in both directions: a blocking thread reads (or writes and hashes) chunks while
//! the async side moves the previous ones, so a transfer holds a few chunks in memory whatever the
//! adapter's size and disk, checksum and network overlap.
use super::RpcError;
use proto::Bytes;
use proto::auth::AttachToken;
use proto::limits::{ARTIFACT_CHUNK_BYTES, MAX_MESSAGE_BYTES};
use proto::pb;
use proto::pb::artifact_service_client::ArtifactServiceClient;
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// An artifact client carrying the token.
pub type Client = ArtifactServiceClient<InterceptedService<Channel, AttachToken>>;

pub fn client(channel: Channel, auth: AttachToken) -> Client {
    ArtifactServiceClient::with_interceptor(channel, auth)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Chunks queued between the disk thread and the network.
const IN_FLIGHT: usize = 4;

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> RpcError + '_ {
    move |source| RpcError::Io {
        path: path.to_path_buf(),
        source,
    }
}

async fn blocking<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, RpcError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io_err(path)(std::io::Error::other(e)))?
        .map_err(io_err(path))
}

/// Uploads every PEFT file of `dir` as `<artifact>/<file>`.
pub async fn upload_adapter(
    client: &mut Client,
    artifact: &str,
    dir: &Path,
) -> Result<(), RpcError> {
    upload_files(client, artifact, dir, &proto::ADAPTER_FILES).await
}

/// Uploads `files` of `dir` as `<artifact>/<file>`, in order.
pub async fn upload_files(
    client: &mut Client,
    artifact: &str,
    dir: &Path,
    files: &[&str],
) -> Result<(), RpcError> {
    for file in files {
        let name = format!("{artifact}/{file}");
        let size = upload_file(client, &name, &dir.join(file)).await?;
        tracing::info!(artifact = %name, size, "uploaded");
    }
    Ok(())
}

/// Streams one file as `name`: one pass hashes it (the header announces size and SHA-256), a
/// second reads it chunk by chunk as the upload takes them (the file is in the page cache by
/// then). Returns its size.
async fn upload_file(client: &mut Client, name: &str, path: &Path) -> Result<u64, RpcError> {
    use pb::artifact_chunk::Part;
    let p = path.to_path_buf();
    let (mut file, size, sha256) = blocking(path, move || {
        let mut file = std::fs::File::open(&p)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; ARTIFACT_CHUNK_BYTES];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        file.rewind()?;
        Ok((file, size, hex::encode(hasher.finalize())))
    })
    .await?;
    let header = pb::ArtifactChunk {
        part: Some(Part::Header(pb::ArtifactHeader {
            name: name.to_string(),
            size,
            sha256,
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(IN_FLIGHT);
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        if tx.blocking_send(header).is_err() {
            return Ok(());
        }
        let mut left = size;
        while left > 0 {
            let n =
                usize::try_from(left).map_or(ARTIFACT_CHUNK_BYTES, |l| l.min(ARTIFACT_CHUNK_BYTES));
            let mut buf = vec![0u8; n];
            file.read_exact(&mut buf)?;
            left -= n as u64;
            let chunk = pb::ArtifactChunk {
                part: Some(Part::Data(Bytes::from(buf))),
            };
            // The upload ended early (the coordinator refused it): its status says why.
            if tx.blocking_send(chunk).is_err() {
                return Ok(());
            }
        }
        Ok(())
    });
    let reply = client
        .upload(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    // A read failure cuts the stream short, which the coordinator refuses as a size mismatch:
    // the read error is the cause, so it is reported first.
    reader
        .await
        .map_err(|e| io_err(path)(std::io::Error::other(e)))?
        .map_err(io_err(path))?;
    let reply = reply?.into_inner();
    if reply.size != size {
        return Err(RpcError::Artifact {
            name: name.to_string(),
            why: format!("stored {} bytes, sent {size}", reply.size),
        });
    }
    Ok(size)
}

/// Downloads `<artifact>/<file>` for every PEFT file into `dir`, checking size and SHA-256.
pub async fn download_adapter(
    client: &mut Client,
    artifact: &str,
    dir: &Path,
) -> Result<(), RpcError> {
    download_files(client, artifact, dir, &proto::ADAPTER_FILES).await
}

/// Downloads `<artifact>/<file>` for each of `files` into `dir`, checking size and SHA-256.
pub async fn download_files(
    client: &mut Client,
    artifact: &str,
    dir: &Path,
    files: &[&str],
) -> Result<(), RpcError> {
    for file in files {
        let name = format!("{artifact}/{file}");
        download_file(client, &name, dir.join(file)).await?;
    }
    Ok(())
}

/// Streams `name` into `path` through a temp file: a blocking thread writes and hashes each chunk
/// as it arrives; the file replaces `path` only once its size and SHA-256 match the header.
async fn download_file(client: &mut Client, name: &str, path: PathBuf) -> Result<(), RpcError> {
    use pb::artifact_chunk::Part;
    let bad = |why: String| RpcError::Artifact {
        name: name.to_string(),
        why,
    };
    let mut stream = client
        .download(pb::DownloadRequest {
            name: name.to_string(),
        })
        .await?
        .into_inner();
    let header = match stream.message().await?.and_then(|c| c.part) {
        Some(Part::Header(h)) => h,
        _ => return Err(bad("the download did not start with a header".into())),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(IN_FLIGHT);
    let p = path.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let mut file = shared::fsutil::AtomicFile::create(&p)?;
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        while let Some(bytes) = rx.blocking_recv() {
            file.write_all(&bytes)?;
            hasher.update(&bytes);
            written += bytes.len() as u64;
        }
        Ok::<_, std::io::Error>((file, written, hex::encode(hasher.finalize())))
    });
    let mut received = 0u64;
    while let Some(c) = stream.message().await? {
        let Some(Part::Data(d)) = c.part else {
            return Err(bad("a second header mid-download".into()));
        };
        received += d.len() as u64;
        if received > header.size {
            return Err(bad(format!(
                "more than the {} bytes its header announced",
                header.size
            )));
        }
        // A closed channel means the writer failed: its error is reported below.
        if tx.send(d).await.is_err() {
            break;
        }
    }
    drop(tx);
    let (file, written, sha) = writer
        .await
        .map_err(|e| io_err(&path)(std::io::Error::other(e)))?
        .map_err(io_err(&path))?;
    if written != header.size || !sha.eq_ignore_ascii_case(&header.sha256) {
        return Err(bad(format!(
            "got {written} bytes with SHA-256 {sha}, expected {} bytes with {}",
            header.size, header.sha256
        )));
    }
    blocking(&path, move || file.commit()).await
}
