//! Runs stage 1b (decoder fine-tuning) alone on a trained folder:
//! `finetune_decoder OUT_DIR [CONFIG_JSON]` (missing keys take the `TrainConfig` defaults).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    latentd_train::one_thread_per_shard();
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(
        args.next()
            .ok_or("usage: finetune_decoder OUT_DIR [CONFIG_JSON]")?,
    );
    let cfg: latentd_train::TrainConfig = match args.next() {
        Some(path) => latentd_train::TrainConfig::from_file(path.as_ref())?,
        None => latentd_train::TrainConfig::default(),
    };
    let report = latentd_train::finetune_decoder_in(&cfg, &out, &latentd_train::Bars::new())?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
