//! `coordinator` command line.
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "coordinator", version, about = "sizespec coordinator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build report.html, report.md and plots/ from an experiment's output folder.
    Report {
        /// The folder holding results.json and predictions/.
        dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Report { dir } => {
            let paths = coordinator::report::build(&dir)?;
            println!("{}\n{}", paths.html.display(), paths.markdown.display());
        }
    }
    Ok(())
}
