//! Trains the demo model:
//! `cargo run --release -p latentd-train --example train_demo -- OUT [--quick | --config FILE.json]`
//! (a config file holds a JSON `TrainConfig`; missing keys take the defaults).

use std::path::PathBuf;

use latentd_train::TrainConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    latentd_train::one_thread_per_shard();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: train_demo OUT_DIR [--quick | --config FILE.json]";
    let out = PathBuf::from(args.first().ok_or(usage)?);
    let cfg = match args.get(1).map(String::as_str) {
        None => TrainConfig::default(),
        Some("--quick") => TrainConfig::quick(),
        Some("--config") => {
            let path = args.get(2).ok_or(usage)?;
            serde_json::from_str(&std::fs::read_to_string(path)?)?
        }
        Some(other) => return Err(format!("unknown argument {other:?}; {usage}").into()),
    };
    let report = latentd_train::train(&cfg, &out, &latentd_train::Bars::new())?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
