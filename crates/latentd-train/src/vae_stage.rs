//! Stage 1: the KL-regularised autoencoder (perceptual compression).

use std::ops::Range;

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use latentd_demo::Rng;
use latentd_models::{AutoencoderKL, AutoencoderKLConfig};
use serde_json::Value;

use crate::config::TrainConfig;
use crate::data::{batch, normal};
use crate::progress::{Log, StepTracker};
use crate::report::StageReport;
use crate::shards::Shards;
use crate::{Error, Result};

/// Stream offsets keep the stages' random draws apart.
const DATA_STREAM: u64 = 0x5641_4501;
const NOISE_STREAM: u64 = 0x5641_4502;
const SCALE_STREAM: u64 = 0x5641_4503;

/// The trained autoencoder.
pub(crate) struct TrainedVae {
    pub(crate) varmap: VarMap,
    pub(crate) config: AutoencoderKLConfig,
    pub(crate) scaling_factor: f64,
    pub(crate) report: StageReport,
}

impl TrainedVae {
    /// The autoencoder saved in `dir` (`config.json` + safetensors), as variables.
    pub(crate) fn load(dir: &std::path::Path, parameters: usize) -> Result<Self> {
        let config = AutoencoderKLConfig::from_file(dir.join("config.json"))?;
        let scaling_factor = config.scaling_factor;
        let mut varmap = VarMap::new();
        {
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
            AutoencoderKL::new(vb, &config)?;
        }
        varmap.load(dir.join("diffusion_pytorch_model.safetensors"))?;
        Ok(Self {
            varmap,
            config,
            scaling_factor,
            report: StageReport::new(parameters),
        })
    }

    /// The autoencoder as a frozen model: its weights are detached copies, so
    /// nothing computed with it tracks gradients.
    pub(crate) fn model(&self) -> Result<AutoencoderKL> {
        let vb = VarBuilder::from_tensors(frozen(&self.varmap)?, DType::F32, &Device::Cpu);
        Ok(AutoencoderKL::new(vb, &self.config)?)
    }

    /// `vae/config.json` with the measured scaling factor.
    pub(crate) fn config_json(&self, cfg: &TrainConfig) -> Value {
        cfg.arch
            .vae_config(cfg.image_size as usize, self.scaling_factor)
    }
}

/// Parses a config written by [`crate::arch::Architecture`].
pub(crate) fn parse<T: serde::de::DeserializeOwned>(value: Value) -> Result<T> {
    serde_json::from_value(value).map_err(|source| Error::Json {
        path: "<generated config>".into(),
        source,
    })
}

/// Trains the autoencoder on L1 reconstruction plus `kl_weight` times the KL
/// divergence to a standard normal, then measures the scaling factor as one
/// over the standard deviation of the latents (as the LDM paper does).
pub(crate) fn train_vae(cfg: &TrainConfig, log: &mut Log) -> Result<TrainedVae> {
    let device = Device::Cpu;
    let config: AutoencoderKLConfig = parse(cfg.arch.vae_config(cfg.image_size as usize, 1.0))?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    AutoencoderKL::new(vb.clone(), &config)?;
    crate::init::initialise(&varmap, cfg.seed ^ DATA_STREAM)?;
    start_nearly_deterministic(&varmap, config.latent_channels)?;
    let parameters = count_parameters(&varmap);
    let stage = &cfg.vae;
    let vars = varmap.all_vars();
    let mut optimiser = AdamW::new(vars.clone(), adamw(stage.learning_rate, stage.weight_decay))?;
    log.line(&format!(
        "vae: {parameters} parameters, {} steps of {} images",
        stage.steps, stage.batch_size
    ));
    log.progress().start("vae", stage.steps as u64);
    let mut tracker = StepTracker::new("vae", stage);
    let mut report = StageReport::new(parameters);
    let shards = Shards::new(cfg.shards)?;
    for step in 0..stage.steps {
        optimiser.set_learning_rate(stage.learning_rate_at(step));
        // Rebuilt every step: constructors may fuse weights into copies.
        let vae = AutoencoderKL::new(vb.clone(), &config)?;
        let data = batch(
            cfg.seed ^ DATA_STREAM,
            step as u64,
            stage.batch_size,
            &cfg.sampler,
            cfg.image_size,
            &device,
        )?;
        let mut rng = Rng::for_item(cfg.seed ^ NOISE_STREAM, step as u64);
        let latent = cfg.latent_size();
        let noise = normal(
            &mut rng,
            &[stage.batch_size, config.latent_channels, latent, latent],
            &device,
        )?;
        let (weights, total_weight) = pixel_weights(&data.foreground, cfg.foreground_weight, 0.0)?;
        let latent_elements = noise.elem_count() as f64;
        // The batch's loss, the rows of `range` at a time: the weighted
        // reconstruction error plus the KL term (mean over latent elements).
        let shard_loss = |range: Range<usize>| -> Result<Vec<Tensor>> {
            let rows = |t: &Tensor| t.narrow(0, range.start, range.len());
            let images = rows(&data.images)?;
            let posterior = vae.encode(&images)?;
            let recon = vae.decode(&posterior.sample_with(&rows(&noise)?)?)?;
            let l1 = reconstruction_loss(&recon, &images, &rows(&weights)?, total_weight)?;
            let kl = (posterior.mean.sqr()? + posterior.std.sqr()?)?
                .affine(1.0, -1.0)?
                .sub(&posterior.logvar)?
                .sum_all()?
                .affine(0.5 / latent_elements, 0.0)?;
            let loss = (&l1 + kl.affine(cfg.kl_weight, 0.0)?)?;
            Ok(vec![loss, l1, kl])
        };
        let (values, gradients) = shards.backward(stage.batch_size, &vars, shard_loss)?;
        optimiser.step(&gradients)?;
        let (value, l1, kl) = (values[0], values[1], values[2]);
        let (shown, log_now) = tracker.record(step, value, &mut report, log)?;
        if log_now {
            log.line(&format!(
                "vae step {} loss {value:.5} (avg {shown:.5}) l1 {:.5} kl {:.4} lr {:.2e}",
                step + 1,
                l1,
                kl,
                stage.learning_rate_at(step)
            ));
        }
    }
    log.progress().finish();
    report.seconds = log.elapsed();
    let mut trained = TrainedVae {
        varmap,
        config,
        scaling_factor: 1.0,
        report,
    };
    trained.scaling_factor = measure_scaling_factor(cfg, &trained.model()?)?;
    trained.config = parse(trained.config_json(cfg))?;
    log.line(&format!(
        "vae: scaling factor {:.5} (1 / std of the latent means of {} images)",
        trained.scaling_factor, cfg.scale_images
    ));
    Ok(trained)
}

/// Absolute plus squared error, weighted per pixel by `weights` `[B, 1, H, W]`
/// and normalised by the mean weight. L1 keeps edges sharp, the squared term
/// gives large errors strong gradients, and the weights stop the background
/// (most pixels) from drowning out the objects' colours. For a shard of a
/// batch it is the shard's share of the batch's loss: `total_weight` is the
/// whole batch's sum of weights ([`pixel_weights`]).
pub(crate) fn reconstruction_loss(
    recon: &Tensor,
    target: &Tensor,
    weights: &Tensor,
    total_weight: f64,
) -> Result<Tensor> {
    let diff = (recon - target)?;
    let error = (diff.abs()? + diff.sqr()?)?.broadcast_mul(weights)?;
    let channels = recon.dim(1)? as f64;
    Ok((error.sum_all()? / (channels * total_weight))?)
}

/// A batch's per-pixel reconstruction weights (`1 + foreground_weight` on
/// object pixels, 1 elsewhere, from the `foreground` mask `[B, 1, H, W]`, plus
/// `outline_weight` times [`outline`]) and their sum.
pub(crate) fn pixel_weights(
    foreground: &Tensor,
    foreground_weight: f64,
    outline_weight: f64,
) -> Result<(Tensor, f64)> {
    let mut weights = foreground.affine(foreground_weight, 1.0)?;
    if outline_weight != 0.0 {
        weights = (weights + outline(foreground)?.affine(outline_weight, 0.0)?)?;
    }
    let total = f64::from(weights.sum_all()?.to_scalar::<f32>()?);
    Ok((weights, total))
}

/// How far each pixel of a mask `[B, 1, H, W]` differs from the mean of its 3x3
/// neighbourhood (edges repeated outwards): 0 inside and far outside an
/// object, largest at its corners (5/9 at a square's), then along its edges
/// on both sides.
fn outline(mask: &Tensor) -> Result<Tensor> {
    let mean = mask
        .pad_with_same(2, 1, 1)?
        .pad_with_same(3, 1, 1)?
        .avg_pool2d_with_stride((3, 3), (1, 1))?;
    Ok((mask - mean)?.abs()?)
}

/// Initial log-variance of the posterior: `std = exp(-3) ~ 0.05`.
const INITIAL_LOGVAR: f32 = -6.0;

/// Sets the log-variance half of `quant_conv`'s bias to [`INITIAL_LOGVAR`], so
/// the decoder first sees latents dominated by the encoder's mean rather than
/// by sampling noise (with unit variance the reconstruction loss barely moves
/// for hundreds of steps).
fn start_nearly_deterministic(varmap: &VarMap, latent_channels: usize) -> Result<()> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| Error::Config("the variable map's lock is poisoned".into()))?;
    let bias = data
        .get("quant_conv.bias")
        .ok_or_else(|| Error::Config("the autoencoder has no quant_conv.bias".into()))?;
    let mut values = vec![0f32; latent_channels];
    values.extend(std::iter::repeat_n(INITIAL_LOGVAR, latent_channels));
    bias.set(&Tensor::from_vec(
        values,
        2 * latent_channels,
        bias.device(),
    )?)?;
    Ok(())
}

/// One over the standard deviation of the latent means of fresh training images.
fn measure_scaling_factor(cfg: &TrainConfig, vae: &AutoencoderKL) -> Result<f64> {
    let chunk = 128;
    let mut latents = Vec::new();
    for index in 0..cfg.scale_images.div_ceil(chunk) {
        let data = batch(
            cfg.seed ^ SCALE_STREAM,
            index as u64,
            chunk.min(cfg.scale_images - index * chunk),
            &cfg.sampler,
            cfg.image_size,
            &Device::Cpu,
        )?;
        latents.push(vae.encode(&data.images)?.mean.flatten_all()?);
    }
    let all = Tensor::cat(&latents, 0)?.to_dtype(DType::F64)?;
    let mean = all.mean_all()?.to_scalar::<f64>()?;
    let variance = all
        .affine(1.0, -mean)?
        .sqr()?
        .mean_all()?
        .to_scalar::<f64>()?;
    if !(variance.is_finite() && variance > 0.0) {
        return Err(Error::Config(format!(
            "the latents have variance {variance}; cannot scale them"
        )));
    }
    Ok(1.0 / variance.sqrt())
}

/// Detached copies of every variable of `varmap`, by name.
pub(crate) fn frozen(varmap: &VarMap) -> Result<std::collections::HashMap<String, Tensor>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| Error::Config("the variable map's lock is poisoned".into()))?;
    Ok(data
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
        .collect())
}

/// AdamW with the usual betas.
pub(crate) fn adamw(learning_rate: f64, weight_decay: f64) -> ParamsAdamW {
    ParamsAdamW {
        lr: learning_rate,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay,
    }
}

/// Number of scalar parameters in `varmap`.
pub(crate) fn count_parameters(varmap: &VarMap) -> usize {
    varmap.all_vars().iter().map(|v| v.elem_count()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Architecture;

    #[test]
    fn outline_peaks_at_corners() {
        // A 3x3 square in a 7x7 mask.
        let mut mask = vec![0f32; 49];
        for y in 2..5 {
            for x in 2..5 {
                mask[y * 7 + x] = 1.0;
            }
        }
        let mask = Tensor::from_vec(mask, (1, 1, 7, 7), &Device::Cpu).unwrap();
        let o: Vec<f32> = outline(&mask)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let at = |x: usize, y: usize| o[y * 7 + x];
        assert!((at(2, 2) - 5.0 / 9.0).abs() < 1e-6, "corner {}", at(2, 2));
        assert!((at(3, 2) - 3.0 / 9.0).abs() < 1e-6, "edge {}", at(3, 2));
        assert!(
            at(3, 3) < 1e-6 && at(0, 0) < 1e-6,
            "centre and far background"
        );
        assert!(
            (at(1, 3) - 3.0 / 9.0).abs() < 1e-6,
            "just outside {}",
            at(1, 3)
        );
        let (w, total) = pixel_weights(&mask, 10.0, 9.0).unwrap();
        let w: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        assert!((w[2 * 7 + 2] - 16.0).abs() < 1e-5 && (w[0] - 1.0).abs() < 1e-6);
        assert!((total - f64::from(w.iter().sum::<f32>())).abs() < 1e-3);
    }

    #[test]
    fn overfits_one_batch() {
        let cfg = TrainConfig {
            arch: Architecture::tiny(),
            ..TrainConfig::quick()
        };
        let device = Device::Cpu;
        let config: AutoencoderKLConfig =
            parse(cfg.arch.vae_config(cfg.image_size as usize, 1.0)).unwrap();
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        AutoencoderKL::new(vb.clone(), &config).unwrap();
        crate::init::initialise(&varmap, 3).unwrap();
        let mut opt = AdamW::new(varmap.all_vars(), adamw(2e-3, 0.0)).unwrap();
        let data = batch(1, 0, 4, &cfg.sampler, 32, &device).unwrap();
        let mut losses = Vec::new();
        for _ in 0..40 {
            let vae = AutoencoderKL::new(vb.clone(), &config).unwrap();
            let z = vae.encode(&data.images).unwrap().mean;
            let recon = vae.decode(&z).unwrap();
            let (ones, total) = pixel_weights(&data.foreground, 0.0, 0.0).unwrap();
            let loss = reconstruction_loss(&recon, &data.images, &ones, total).unwrap();
            losses.push(loss.to_scalar::<f32>().unwrap());
            opt.backward_step(&loss).unwrap();
        }
        eprintln!("{losses:?}");
        assert!(losses[39] < 0.5 * losses[0], "{losses:?}");
    }
}
