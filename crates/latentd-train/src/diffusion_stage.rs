//! Stage 2: the text-conditioned UNet and the text encoder, trained jointly in
//! the frozen autoencoder's latent space with epsilon prediction.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, VarBuilder, VarMap};
use latentd_demo::Rng;
use latentd_models::text::{ClipTextConfig, ClipTextModel, ClipTokenizer};
use latentd_models::{AutoencoderKL, UNet2DConditionConfig, UNet2DConditionModel};

use crate::config::{Prediction, TrainConfig};
use crate::data::{batch, normal};
use crate::progress::{Log, StepTracker};
use crate::report::StageReport;
use crate::save::write_json;
use crate::schedule::{timestep_tensor, NoiseSchedule};
use crate::vae_stage::{adamw, count_parameters, frozen, parse};
use crate::{Error, Result};

const LATENT_STREAM: u64 = 0x4C44_4D01;
const STEP_STREAM: u64 = 0x4C44_4D02;
const INIT_STREAM: u64 = 0x4C44_4D03;
/// Images encoded per autoencoder call while building the latent set.
const ENCODE_CHUNK: usize = 256;

/// The trained UNet and text encoder.
pub(crate) struct TrainedDiffusion {
    pub(crate) unet: VarMap,
    pub(crate) text: VarMap,
    pub(crate) report: StageReport,
    pub(crate) unet_parameters: usize,
    pub(crate) text_parameters: usize,
}

/// Scaled latents and token ids of a fixed set of training scenes.
struct LatentSet {
    latents: Tensor,
    ids: Vec<u32>,
    len: usize,
}

/// Encodes `cfg.latent_examples` training scenes with the frozen autoencoder
/// (latent means times `scaling_factor`) and tokenizes their captions.
fn encode_latents(
    cfg: &TrainConfig,
    vae: &AutoencoderKL,
    scaling_factor: f64,
    tokenizer: &ClipTokenizer,
    log: &mut Log,
) -> Result<LatentSet> {
    let chunks = cfg.latent_examples.div_ceil(ENCODE_CHUNK);
    let mut latents = Vec::with_capacity(chunks);
    let mut ids = Vec::with_capacity(cfg.latent_examples * tokenizer.max_length());
    log.progress().start("encode", chunks as u64);
    for index in 0..chunks {
        let size = ENCODE_CHUNK.min(cfg.latent_examples - index * ENCODE_CHUNK);
        let data = batch(
            cfg.seed ^ LATENT_STREAM,
            index as u64,
            size,
            &cfg.diffusion_sampler,
            cfg.image_size,
            &Device::Cpu,
        )?;
        latents.push(vae.encode(&data.images)?.mean.affine(scaling_factor, 0.0)?);
        for caption in &data.captions {
            ids.extend(tokenizer.encode(caption)?);
        }
        log.progress().step(index as u64 + 1, 0.0);
    }
    log.progress().finish();
    let latents = Tensor::cat(&latents, 0)?;
    log.line(&format!(
        "diffusion: encoded {} training scenes to latents {:?}",
        cfg.latent_examples,
        latents.dims()
    ));
    Ok(LatentSet {
        latents,
        ids,
        len: cfg.latent_examples,
    })
}

/// An exponential moving average of the variables of one [`VarMap`].
struct Ema {
    decay: f64,
    entries: Vec<(String, Var, Tensor)>,
}

impl Ema {
    fn new(varmap: &VarMap, decay: f64) -> Result<Self> {
        let mut entries = frozen(varmap)?
            .into_iter()
            .map(|(name, tensor)| {
                let var = var_named(varmap, &name)?;
                Ok((name, var, tensor.copy()?))
            })
            .collect::<Result<Vec<_>>>()?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self { decay, entries })
    }

    /// Moves the averages towards the variables; the decay ramps up over the
    /// first steps, `min(decay, (1 + step) / (10 + step))`.
    fn update(&mut self, step: usize) -> Result<()> {
        let decay = self.decay.min((1 + step) as f64 / (10 + step) as f64);
        for (_, var, average) in &mut self.entries {
            // Detached: an average built from the variable would keep every
            // step's graph (and tensors) alive through its inputs.
            let current = var.as_tensor().detach();
            *average = ((&*average * decay)? + (current * (1.0 - decay))?)?.detach();
        }
        Ok(())
    }

    /// Writes the averages as a safetensors file.
    fn save(&self, path: &Path) -> Result<()> {
        let tensors: HashMap<String, Tensor> = self
            .entries
            .iter()
            .map(|(name, _, average)| (name.clone(), average.clone()))
            .collect();
        candle_core::safetensors::save(&tensors, path)?;
        Ok(())
    }

    /// Writes the averages into the variables.
    fn apply(&self) -> Result<()> {
        for (_, var, average) in &self.entries {
            var.set(average)?;
        }
        Ok(())
    }
}

fn var_named(varmap: &VarMap, name: &str) -> Result<Var> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| Error::Config("the variable map's lock is poisoned".into()))?;
    data.get(name)
        .cloned()
        .ok_or_else(|| Error::Config(format!("no variable {name}")))
}

/// Where and how often stage 2 writes its averaged weights while training.
pub(crate) struct Checkpoints<'a> {
    pub(crate) out: &'a Path,
    pub(crate) every: usize,
}

impl Checkpoints<'_> {
    fn save(&self, cfg: &TrainConfig, vocab_size: usize, unet: &Ema, text: &Ema) -> Result<()> {
        let unet_dir = self.out.join("unet");
        let text_dir = self.out.join("text_encoder");
        for dir in [&unet_dir, &text_dir] {
            std::fs::create_dir_all(dir).map_err(crate::error::io(dir))?;
        }
        write_json(
            &unet_dir.join("config.json"),
            &cfg.arch.unet_config(cfg.latent_size()),
        )?;
        write_json(
            &text_dir.join("config.json"),
            &cfg.arch.text_config(vocab_size),
        )?;
        unet.save(&unet_dir.join("diffusion_pytorch_model.safetensors"))?;
        text.save(&text_dir.join("model.safetensors"))
    }
}

/// Trains the UNet and the text encoder jointly: DDPM noising with the configured
/// schedule, MSE on the configured target weighted per timestep
/// ([`NoiseSchedule::loss_weight`]),
/// `caption_dropout` of the captions replaced by the empty prompt. The saved
/// weights are the exponential moving average.
pub(crate) fn train_diffusion(
    cfg: &TrainConfig,
    vae: &AutoencoderKL,
    scaling_factor: f64,
    tokenizer: &ClipTokenizer,
    vocab_size: usize,
    checkpoints: &Checkpoints,
    log: &mut Log,
) -> Result<TrainedDiffusion> {
    let device = Device::Cpu;
    let set = encode_latents(cfg, vae, scaling_factor, tokenizer, log)?;
    let unet_cfg: UNet2DConditionConfig = parse(cfg.arch.unet_config(cfg.latent_size()))?;
    let text_cfg: ClipTextConfig = parse(cfg.arch.text_config(vocab_size))?;
    let (unet_map, text_map) = (VarMap::new(), VarMap::new());
    let unet_vb = VarBuilder::from_varmap(&unet_map, DType::F32, &device);
    let text_vb = VarBuilder::from_varmap(&text_map, DType::F32, &device).pp("text_model");
    UNet2DConditionModel::new(unet_vb.clone(), &unet_cfg)?;
    ClipTextModel::new(text_vb.clone(), &text_cfg)?;
    crate::init::initialise(&unet_map, cfg.seed ^ INIT_STREAM)?;
    crate::init::initialise(&text_map, cfg.seed ^ INIT_STREAM ^ 1)?;
    let (unet_parameters, text_parameters) =
        (count_parameters(&unet_map), count_parameters(&text_map));
    let stage = &cfg.diffusion;
    let mut unet_optimiser = AdamW::new(
        unet_map.all_vars(),
        adamw(stage.learning_rate, stage.weight_decay),
    )?;
    // The text encoder's own optimiser, or none when its learning rate is zero.
    let text_scale = cfg.text_learning_rate_scale;
    let mut text_optimiser = (text_scale > 0.0)
        .then(|| {
            AdamW::new(
                text_map.all_vars(),
                adamw(stage.learning_rate * text_scale, stage.weight_decay),
            )
        })
        .transpose()?;
    let mut unet_ema = Ema::new(&unet_map, cfg.ema_decay)?;
    let mut text_ema = Ema::new(&text_map, cfg.ema_decay)?;
    let schedule = NoiseSchedule::default();
    let empty = tokenizer.encode("")?;
    let length = tokenizer.max_length();
    let (c, h, w) = set.latents.dims4().map(|(_, c, h, w)| (c, h, w))?;
    log.line(&format!(
        "diffusion: UNet {unet_parameters} + text encoder {text_parameters} parameters, {} steps of {}",
        stage.steps, stage.batch_size
    ));
    log.progress().start("diffusion", stage.steps as u64);
    let mut tracker = StepTracker::new("diffusion", stage);
    let mut report = StageReport::new(unet_parameters + text_parameters);
    let b = stage.batch_size;
    let [first_timestep, end_timestep] = cfg.timestep_range;
    let timestep_span = end_timestep.saturating_sub(first_timestep).max(1) as u64;
    for step in 0..stage.steps {
        let learning_rate = stage.learning_rate_at(step);
        unet_optimiser.set_learning_rate(learning_rate);
        if let Some(text_optimiser) = &mut text_optimiser {
            text_optimiser.set_learning_rate(learning_rate * text_scale);
        }
        let mut rng = Rng::for_item(cfg.seed ^ STEP_STREAM, step as u64);
        let rows: Vec<u32> = (0..b).map(|_| rng.below(set.len as u64) as u32).collect();
        let timesteps: Vec<usize> = (0..b)
            .map(|_| first_timestep + rng.below(timestep_span) as usize)
            .collect();
        let mut ids = Vec::with_capacity(b * length);
        for &row in &rows {
            if rng.unit() < cfg.caption_dropout {
                ids.extend_from_slice(&empty);
            } else {
                let start = row as usize * length;
                ids.extend_from_slice(&set.ids[start..start + length]);
            }
        }
        let noise = normal(&mut rng, &[b, c, h, w], &device)?;
        let x0 = set.latents.index_select(&Tensor::new(rows, &device)?, 0)?;
        let xt = schedule.add_noise(&x0, &noise, &timesteps)?;
        let ids = Tensor::from_vec(ids, (b, length), &device)?;
        // Rebuilt every step: constructors fuse projection weights into copies.
        let text = ClipTextModel::new(text_vb.clone(), &text_cfg)?;
        let unet = UNet2DConditionModel::new(unet_vb.clone(), &unet_cfg)?;
        let context = text.forward(&ids)?;
        // A frozen text encoder needs no gradients: stop the backward pass at its output.
        let text_trains = text_optimiser.is_some() && step >= cfg.text_frozen_steps;
        let context = if text_trains {
            context
        } else {
            context.detach()
        };
        let prediction = unet.forward(&xt, &timestep_tensor(&timesteps, &device)?, &context)?;
        let target = match cfg.prediction {
            Prediction::Epsilon => noise.clone(),
            Prediction::VPrediction => schedule.velocity(&x0, &noise, &timesteps)?,
        };
        let per_row = (prediction - &target)?.sqr()?.flatten_from(1)?.mean(1)?;
        let weights: Vec<f32> = timesteps
            .iter()
            .map(|&t| {
                schedule.loss_weight(t, cfg.prediction, cfg.min_snr_gamma, cfg.min_snr_floor) as f32
            })
            .collect();
        let loss = (per_row * Tensor::from_vec(weights, b, &device)?)?.mean_all()?;
        let gradients = loss.backward()?;
        unet_optimiser.step(&gradients)?;
        if let Some(text_optimiser) = text_optimiser.as_mut().filter(|_| text_trains) {
            text_optimiser.step(&gradients)?;
        }
        unet_ema.update(step)?;
        text_ema.update(step)?;
        let value = loss.to_scalar::<f32>()?;
        let (shown, log_now) = tracker.record(step, value, &mut report, log)?;
        if log_now {
            log.line(&format!(
                "diffusion step {} loss {value:.5} (avg {shown:.5}) lr {:.2e}",
                step + 1,
                learning_rate
            ));
        }
        if checkpoints.every > 0 && (step + 1) % checkpoints.every == 0 && step + 1 < stage.steps {
            checkpoints.save(cfg, vocab_size, &unet_ema, &text_ema)?;
            log.line(&format!(
                "diffusion: checkpoint of the averaged weights at step {}",
                step + 1
            ));
        }
    }
    log.progress().finish();
    unet_ema.apply()?;
    text_ema.apply()?;
    report.seconds = log.elapsed();
    Ok(TrainedDiffusion {
        unet: unet_map,
        text: text_map,
        report,
        unet_parameters,
        text_parameters,
    })
}
