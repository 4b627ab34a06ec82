//! Runs stage 2 alone on a folder whose tokenizer and autoencoder are trained:
//! `train_diffusion OUT_DIR` with the default `TrainConfig`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: train_diffusion OUT_DIR")?,
    );
    let cfg = latentd_train::TrainConfig::default();
    let report = latentd_train::train_diffusion_in(&cfg, &out, &latentd_train::Bars::new())?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
