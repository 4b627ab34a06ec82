//! `latentd train-demo`: train the built-in demo model from scratch.

use std::path::PathBuf;

use clap::Args;
use latentd_train::{Bars, TrainConfig};

/// Arguments of `latentd train-demo`.
#[derive(Debug, Args)]
pub struct TrainDemoArgs {
    /// Output folder: a diffusers pipeline folder plus train.log, train_config.json
    /// and train_report.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Tiny networks and a few steps: a smoke test that runs in seconds.
    #[arg(long, conflicts_with = "config")]
    pub quick: bool,
    /// A JSON training configuration (missing keys take the defaults).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Runs the command; returns the exit code.
pub fn run(args: TrainDemoArgs) -> i32 {
    // Called from `main` before any other thread starts.
    latentd_train::one_thread_per_shard();
    let cfg = if args.quick {
        TrainConfig::quick()
    } else if let Some(path) = &args.config {
        match TrainConfig::from_file(path) {
            Ok(cfg) => cfg,
            Err(e) => {
                eprintln!("error: cannot read training config {e}");
                return super::EXIT_USAGE;
            }
        }
    } else {
        TrainConfig::default()
    };
    match latentd_train::train(&cfg, &args.out, &Bars::new()) {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
            eprintln!("trained model written to {}", args.out.display());
            0
        }
        Err(e) => {
            eprintln!("error: training failed: {e}");
            1
        }
    }
}
