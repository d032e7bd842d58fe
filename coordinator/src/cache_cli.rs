//! `coordinator cache list|prune`: the prediction cache shared across experiments.
use anyhow::Result;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum CacheCmd {
    /// Every cached evaluation: model, rows, when last written.
    List,
    /// Remove cached evaluations.
    Prune {
        /// Only those last written more than this many days ago.
        #[arg(long, required_unless_present = "all")]
        older_than_days: Option<u64>,
        /// Every cached evaluation (of `--model`, if given).
        #[arg(long, conflicts_with = "older_than_days")]
        all: bool,
        /// Only evaluations of models whose name contains this.
        #[arg(long)]
        model: Option<String>,
    },
}

pub fn cache_cmd(cmd: CacheCmd, dir: Option<PathBuf>) -> Result<()> {
    use coordinator::cache::{PredictionCache, default_dir, now_unix, rfc3339};
    let cache = PredictionCache::new(dir.unwrap_or_else(default_dir));
    match cmd {
        CacheCmd::List => {
            let groups = cache.list().map_err(anyhow::Error::msg)?;
            println!("{} ({} evaluations)", cache.dir.display(), groups.len());
            for (key, m, rows) in groups {
                println!(
                    "  {} {:>6} rows  {}{} {} max_new_tokens={}  last written {}",
                    &key[..12.min(key.len())],
                    rows,
                    m.model,
                    m.revision.map(|r| format!("@{r}")).unwrap_or_default(),
                    m.quantization,
                    m.max_new_tokens,
                    rfc3339(m.updated)
                );
            }
        }
        CacheCmd::Prune {
            older_than_days,
            all: _,
            model,
        } => {
            let before = match older_than_days {
                Some(d) => now_unix().saturating_sub(d * 86_400),
                None => u64::MAX,
            };
            let removed = cache
                .prune(before, model.as_deref())
                .map_err(anyhow::Error::msg)?;
            println!(
                "removed {} cached evaluations from {}",
                removed.len(),
                cache.dir.display()
            );
        }
    }
    Ok(())
}
