//! Stage 1b: fine-tuning the autoencoder's decoder with the encoder frozen.
//!
//! Stage 1 decodes noisy posterior samples, which teaches the decoder to hedge
//! with blurred edges. Here the decoder (and `post_quant_conv`) learn to
//! reconstruct sharply from the latent means while the encoder stays fixed, so
//! the latent space, the scaling factor and everything stage 2 learns on it
//! are unchanged (as Stable Diffusion's fine-tuned decoders were made).

use std::ops::Range;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, VarBuilder};
use latentd_models::AutoencoderKL;

use crate::config::{DecoderRound, TrainConfig};
use crate::data::batch;
use crate::progress::{Log, StepTracker};
use crate::report::StageReport;
use crate::shards::Shards;
use crate::vae_stage::{adamw, pixel_weights, reconstruction_loss, TrainedVae};
use crate::{Error, Result};

const DATA_STREAM: u64 = 0x4445_4301;

/// Whether a variable belongs to the part of the autoencoder that is tuned.
fn is_decoder(name: &str) -> bool {
    name.starts_with("decoder.") || name.starts_with("post_quant_conv.")
}

/// Fine-tunes the decoder of `vae` in place for one round (every round draws
/// the same data stream).
pub(crate) fn finetune_decoder(
    cfg: &TrainConfig,
    round: &DecoderRound,
    vae: &mut TrainedVae,
    log: &mut Log,
) -> Result<StageReport> {
    let stage = &round.stage;
    let device = Device::Cpu;
    let frozen = vae.model()?;
    let vars: Vec<Var> = {
        let data = vae
            .varmap
            .data()
            .lock()
            .map_err(|_| Error::Config("the variable map's lock is poisoned".into()))?;
        let mut named: Vec<(&String, &Var)> =
            data.iter().filter(|(name, _)| is_decoder(name)).collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        named.into_iter().map(|(_, var)| var.clone()).collect()
    };
    let parameters = vars.iter().map(|v| v.elem_count()).sum();
    let mut optimiser = AdamW::new(vars.clone(), adamw(stage.learning_rate, stage.weight_decay))?;
    let vb = VarBuilder::from_varmap(&vae.varmap, DType::F32, &device);
    log.line(&format!(
        "decoder: fine-tuning {parameters} parameters, {} steps of {} images",
        stage.steps, stage.batch_size
    ));
    log.progress().start("decoder", stage.steps as u64);
    let mut tracker = StepTracker::new("decoder", stage);
    let mut report = StageReport::new(parameters);
    let shards = Shards::new(cfg.shards)?;
    for step in 0..stage.steps {
        optimiser.set_learning_rate(stage.learning_rate_at(step));
        let data = batch(
            cfg.seed ^ DATA_STREAM,
            step as u64,
            stage.batch_size,
            &cfg.sampler,
            cfg.image_size,
            &device,
        )?;
        let model = AutoencoderKL::new(vb.clone(), &vae.config)?;
        let (weights, total_weight) = pixel_weights(
            &data.foreground,
            cfg.foreground_weight,
            round.outline_weight,
        )?;
        // The batch's loss, the rows of `range` at a time.
        let shard_loss = |range: Range<usize>| -> Result<Vec<Tensor>> {
            let rows = |t: &Tensor| t.narrow(0, range.start, range.len());
            let images = rows(&data.images)?;
            let latents = frozen.encode(&images)?.mean.detach();
            let recon = model.decode(&latents)?;
            let loss = reconstruction_loss(&recon, &images, &rows(&weights)?, total_weight)?;
            Ok(vec![loss])
        };
        let (values, gradients) = shards.backward(stage.batch_size, &vars, shard_loss)?;
        optimiser.step(&gradients)?;
        let value = values[0];
        let (shown, log_now) = tracker.record(step, value, &mut report, log)?;
        if log_now {
            log.line(&format!(
                "decoder step {} loss {value:.5} (avg {shown:.5}) lr {:.2e}",
                step + 1,
                stage.learning_rate_at(step)
            ));
        }
    }
    log.progress().finish();
    report.seconds = log.elapsed();
    Ok(report)
}
