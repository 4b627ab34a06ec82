//! Runs stage 1b (decoder fine-tuning) alone on a trained folder:
//! `finetune_decoder OUT_DIR` with the default `TrainConfig`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: finetune_decoder OUT_DIR")?,
    );
    let cfg = latentd_train::TrainConfig::default();
    let report = latentd_train::finetune_decoder_in(&cfg, &out, &latentd_train::Bars::new())?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
