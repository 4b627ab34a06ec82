//! Runs stage 2 alone on a folder whose tokenizer and autoencoder are trained:
//! `train_diffusion OUT_DIR [CONFIG_JSON]` (missing keys take the `TrainConfig`
//! defaults) trains the main stage and the config's `diffusion_rounds`;
//! `train_diffusion --continue DONE OUT_DIR [CONFIG_JSON]` runs the rounds after
//! the first DONE, from the UNet and text encoder in OUT_DIR.

use std::path::PathBuf;

const USAGE: &str = "usage: train_diffusion [--continue DONE] OUT_DIR [CONFIG_JSON]";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    latentd_train::one_thread_per_shard();
    let mut args = std::env::args().skip(1).peekable();
    let done = match args.next_if(|arg| arg == "--continue") {
        Some(_) => Some(args.next().ok_or(USAGE)?.parse::<usize>()?),
        None => None,
    };
    let out = PathBuf::from(args.next().ok_or(USAGE)?);
    let cfg: latentd_train::TrainConfig = match args.next() {
        Some(path) => latentd_train::TrainConfig::from_file(path.as_ref())?,
        None => latentd_train::TrainConfig::default(),
    };
    let bars = latentd_train::Bars::new();
    let reports = match done {
        Some(done) => latentd_train::continue_diffusion_in(&cfg, &out, done, &bars)?,
        None => latentd_train::train_diffusion_in(&cfg, &out, &bars)?,
    };
    println!("{}", serde_json::to_string_pretty(&reports)?);
    Ok(())
}
