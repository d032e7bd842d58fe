//! Adapter transfer throughput over loopback: a coordinator's artifact service and the agent's
//! upload/download client, as the product uses them (chunked, SHA-256 checked, stored atomically).
//!
//!   cargo run --release -p tests --example transfer -- [MIB...]    (default: 64 389)
//!
//! 389 MiB is the size of a 3B model's r64 adapter on all seven projections in f32. Prints one row
//! per size: upload and download MB/s (best of 3), and where the time goes is left to a profiler.
use agent::rpc::Connection;
use agent::rpc::artifacts::{client, download_adapter, upload_adapter};
use proto::auth::AttachToken;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| {
            a.parse()
                .map_err(|e| anyhow::anyhow!("size `{a}` (MiB): {e}"))
        })
        .collect::<Result<_, _>>()?;
    let sizes = if sizes.is_empty() {
        vec![64, 389]
    } else {
        sizes
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(&sizes))
}

async fn run(sizes: &[usize]) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let stop = CancellationToken::new();
    let plan = tests::demo_plan("transfer", &dir.path().join("out"), 1, 1);
    let coord = tests::start_coordinator(&dir.path().join("data"), plan, None, stop.clone()).await;
    let conn = Connection {
        url: format!("http://{}", coord.addr),
        token: None,
        tls: None,
    };
    let mut c = client(conn.channel().await?, AttachToken(None));
    println!("| MiB | upload MB/s | download MB/s |");
    println!("|---:|---:|---:|");
    for &mib in sizes {
        let src = dir.path().join(format!("src-{mib}"));
        std::fs::create_dir_all(&src)?;
        std::fs::write(src.join("adapter_config.json"), b"{\"r\": 64}")?;
        // Incompressible bytes, as trained weights are.
        let mut bytes = vec![0u8; mib << 20];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for chunk in bytes.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        std::fs::write(src.join("adapter_model.safetensors"), &bytes)?;
        let (mut up, mut down) = (0f64, 0f64);
        for rep in 0..3 {
            let name = format!("transfer/t{mib}-{rep}");
            let t = Instant::now();
            upload_adapter(&mut c, &name, &src).await?;
            up = up.max(bytes.len() as f64 / t.elapsed().as_secs_f64() / 1e6);
            let dst = dir.path().join(format!("dst-{mib}-{rep}"));
            let t = Instant::now();
            download_adapter(&mut c, &name, &dst).await?;
            down = down.max(bytes.len() as f64 / t.elapsed().as_secs_f64() / 1e6);
            anyhow::ensure!(
                std::fs::read(dst.join("adapter_model.safetensors"))? == bytes,
                "{name}: downloaded bytes differ from the uploaded ones"
            );
        }
        println!("| {mib} | {up:.0} | {down:.0} |");
    }
    stop.cancel();
    Ok(())
}
