//! Stage 2: the text-conditioned UNet and the text encoder, trained jointly in
//! the frozen autoencoder's latent space, in a main stage and continuation rounds.

use std::ops::Range;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, VarBuilder, VarMap};
use latentd_demo::{Rng, SamplerConfig};
use latentd_models::text::{ClipTextConfig, ClipTextModel, ClipTokenizer};
use latentd_models::{AutoencoderKL, UNet2DConditionConfig, UNet2DConditionModel};

use crate::config::{Prediction, StageConfig, TrainConfig};
use crate::data::{batch, normal};
use crate::ema::Ema;
use crate::progress::{Log, StepTracker};
use crate::report::StageReport;
use crate::save::write_json;
use crate::schedule::{timestep_tensor, NoiseSchedule};
use crate::shards::Shards;
use crate::vae_stage::{adamw, count_parameters, parse};
use crate::Result;

const LATENT_STREAM: u64 = 0x4C44_4D01;
const STEP_STREAM: u64 = 0x4C44_4D02;
const INIT_STREAM: u64 = 0x4C44_4D03;
/// Images encoded per autoencoder call while building the latent set.
const ENCODE_CHUNK: usize = 256;

/// Seed offset of round `round`'s streams (0 is the main stage).
fn round_stream(round: usize) -> u64 {
    (round as u64) << 40
}

/// The UNet and the text encoder stage 2 trains, as variables.
pub(crate) struct DiffusionNets {
    pub(crate) unet: VarMap,
    pub(crate) text: VarMap,
    unet_cfg: UNet2DConditionConfig,
    text_cfg: ClipTextConfig,
}

impl DiffusionNets {
    fn build(cfg: &TrainConfig, vocab_size: usize) -> Result<Self> {
        let unet_cfg: UNet2DConditionConfig = parse(cfg.arch.unet_config(cfg.latent_size()))?;
        let text_cfg: ClipTextConfig = parse(cfg.arch.text_config(vocab_size))?;
        let nets = Self {
            unet: VarMap::new(),
            text: VarMap::new(),
            unet_cfg,
            text_cfg,
        };
        UNet2DConditionModel::new(nets.unet_builder(), &nets.unet_cfg)?;
        ClipTextModel::new(nets.text_builder(), &nets.text_cfg)?;
        Ok(nets)
    }

    /// Scalar parameters of the UNet and of the text encoder.
    pub(crate) fn parameters(&self) -> (usize, usize) {
        (count_parameters(&self.unet), count_parameters(&self.text))
    }

    /// Both networks at their seeded initial weights.
    pub(crate) fn seeded(cfg: &TrainConfig, vocab_size: usize) -> Result<Self> {
        let nets = Self::build(cfg, vocab_size)?;
        crate::init::initialise(&nets.unet, cfg.seed ^ INIT_STREAM)?;
        crate::init::initialise(&nets.text, cfg.seed ^ INIT_STREAM ^ 1)?;
        Ok(nets)
    }

    /// Both networks with the weights saved in a pipeline folder.
    pub(crate) fn load(cfg: &TrainConfig, vocab_size: usize, out: &Path) -> Result<Self> {
        let mut nets = Self::build(cfg, vocab_size)?;
        nets.unet
            .load(out.join("unet").join("diffusion_pytorch_model.safetensors"))?;
        nets.text
            .load(out.join("text_encoder").join("model.safetensors"))?;
        Ok(nets)
    }

    fn unet_builder(&self) -> VarBuilder<'static> {
        VarBuilder::from_varmap(&self.unet, DType::F32, &Device::Cpu)
    }

    fn text_builder(&self) -> VarBuilder<'static> {
        VarBuilder::from_varmap(&self.text, DType::F32, &Device::Cpu).pp("text_model")
    }
}

/// One stretch of stage-2 training: the main stage (round 0) or a continuation.
pub(crate) struct Phase<'a> {
    /// 0 for the main stage, then 1, 2, ... for `diffusion_rounds`.
    pub(crate) round: usize,
    pub(crate) stage: &'a StageConfig,
    pub(crate) sampler: &'a SamplerConfig,
    /// Steps at the start with the text encoder held fixed.
    pub(crate) text_frozen_steps: usize,
    /// The text encoder's learning rate as a multiple of the UNet's.
    pub(crate) text_learning_rate_scale: f64,
    /// Floor on the min-SNR x0-error weight.
    pub(crate) min_snr_floor: f64,
}

impl<'a> Phase<'a> {
    /// The main stage, then every continuation round of `cfg`.
    pub(crate) fn all(cfg: &'a TrainConfig) -> Vec<Self> {
        let main = Phase {
            round: 0,
            stage: &cfg.diffusion,
            sampler: &cfg.diffusion_sampler,
            text_frozen_steps: cfg.text_frozen_steps,
            text_learning_rate_scale: cfg.text_learning_rate_scale,
            min_snr_floor: cfg.min_snr_floor,
        };
        std::iter::once(main).chain(Self::rounds(cfg)).collect()
    }

    /// The continuation rounds of `cfg` alone.
    pub(crate) fn rounds(cfg: &'a TrainConfig) -> impl Iterator<Item = Self> + 'a {
        cfg.diffusion_rounds
            .iter()
            .enumerate()
            .map(|(index, round)| Phase {
                round: index + 1,
                stage: &round.stage,
                sampler: &round.sampler,
                text_frozen_steps: 0,
                text_learning_rate_scale: round
                    .text_learning_rate_scale
                    .unwrap_or(cfg.text_learning_rate_scale),
                min_snr_floor: round.min_snr_floor.unwrap_or(cfg.min_snr_floor),
            })
    }

    fn name(&self) -> String {
        match self.round {
            0 => "diffusion".to_owned(),
            round => format!("diffusion round {round}"),
        }
    }
}

/// Scaled latents and token ids of a fixed set of training scenes.
struct LatentSet {
    latents: Tensor,
    ids: Vec<u32>,
    len: usize,
}

/// Encodes `cfg.latent_examples` training scenes of `phase` with the frozen
/// autoencoder (latent means times its scaling factor) and tokenizes their captions.
fn encode_latents(
    cfg: &TrainConfig,
    phase: &Phase,
    inputs: &Inputs,
    log: &mut Log,
) -> Result<LatentSet> {
    let tokenizer = inputs.tokenizer;
    let chunks = cfg.latent_examples.div_ceil(ENCODE_CHUNK);
    let mut latents = Vec::with_capacity(chunks);
    let mut ids = Vec::with_capacity(cfg.latent_examples * tokenizer.max_length());
    log.progress().start("encode", chunks as u64);
    let encode = |index: usize| -> Result<(Tensor, Vec<u32>)> {
        let size = ENCODE_CHUNK.min(cfg.latent_examples - index * ENCODE_CHUNK);
        let data = batch(
            cfg.seed ^ LATENT_STREAM ^ round_stream(phase.round),
            index as u64,
            size,
            phase.sampler,
            cfg.image_size,
            &Device::Cpu,
        )?;
        let latents = inputs
            .vae
            .encode(&data.images)?
            .mean
            .affine(inputs.scaling_factor, 0.0)?;
        let mut ids = Vec::with_capacity(size * tokenizer.max_length());
        for caption in &data.captions {
            ids.extend(tokenizer.encode(caption)?);
        }
        Ok((latents, ids))
    };
    // A group of chunks per thread at a time, so the progress bar moves.
    let indices: Vec<usize> = (0..chunks).collect();
    let shards = Shards::new(cfg.shards)?;
    for group in indices.chunks(shards.count()) {
        for (chunk_latents, chunk_ids) in shards.map(group.to_vec(), encode)? {
            latents.push(chunk_latents);
            ids.extend(chunk_ids);
        }
        log.progress().step(latents.len() as u64, 0.0);
    }
    log.progress().finish();
    let latents = Tensor::cat(&latents, 0)?;
    log.line(&format!(
        "{}: encoded {} training scenes to latents {:?}",
        phase.name(),
        cfg.latent_examples,
        latents.dims()
    ));
    Ok(LatentSet {
        latents,
        ids,
        len: cfg.latent_examples,
    })
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

/// The frozen models and files stage 2 trains with.
pub(crate) struct Inputs<'a> {
    pub(crate) vae: &'a AutoencoderKL,
    pub(crate) scaling_factor: f64,
    pub(crate) tokenizer: &'a ClipTokenizer,
    pub(crate) vocab_size: usize,
}

/// Trains the UNet and the text encoder jointly for one phase: DDPM noising
/// with the configured schedule, MSE on the configured target weighted per
/// timestep ([`NoiseSchedule::loss_weight`]), `caption_dropout` of the captions
/// replaced by the empty prompt. On return the variables hold the phase's
/// exponential moving average, which is what is saved.
pub(crate) fn train_phase(
    cfg: &TrainConfig,
    phase: &Phase,
    nets: &DiffusionNets,
    inputs: &Inputs,
    checkpoints: &Checkpoints,
    log: &mut Log,
) -> Result<StageReport> {
    let device = Device::Cpu;
    let set = encode_latents(cfg, phase, inputs, log)?;
    let (unet_vb, text_vb) = (nets.unet_builder(), nets.text_builder());
    let stage = phase.stage;
    let mut unet_optimiser = AdamW::new(
        nets.unet.all_vars(),
        adamw(stage.learning_rate, stage.weight_decay),
    )?;
    // The text encoder's own optimiser, or none when its learning rate is zero.
    let text_scale = phase.text_learning_rate_scale;
    let mut text_optimiser = (text_scale > 0.0)
        .then(|| {
            AdamW::new(
                nets.text.all_vars(),
                adamw(stage.learning_rate * text_scale, stage.weight_decay),
            )
        })
        .transpose()?;
    let mut unet_ema = Ema::new(&nets.unet, cfg.ema_decay)?;
    let mut text_ema = Ema::new(&nets.text, cfg.ema_decay)?;
    let schedule = NoiseSchedule::default();
    let empty = inputs.tokenizer.encode("")?;
    let length = inputs.tokenizer.max_length();
    let (c, h, w) = set.latents.dims4().map(|(_, c, h, w)| (c, h, w))?;
    let name = phase.name();
    let (unet_parameters, text_parameters) = nets.parameters();
    log.line(&format!(
        "{name}: UNet {unet_parameters} + text encoder {text_parameters} parameters, {} steps of {}",
        stage.steps, stage.batch_size
    ));
    log.progress().start(&name, stage.steps as u64);
    let mut tracker = StepTracker::new("diffusion", stage);
    let mut report = StageReport::new(unet_parameters + text_parameters);
    let b = stage.batch_size;
    let vars: Vec<_> = [nets.unet.all_vars(), nets.text.all_vars()].concat();
    let [first_timestep, end_timestep] = cfg.timestep_range;
    let timestep_span = end_timestep.saturating_sub(first_timestep).max(1) as u64;
    let shards = Shards::new(cfg.shards)?;
    for step in 0..stage.steps {
        let learning_rate = stage.learning_rate_at(step);
        unet_optimiser.set_learning_rate(learning_rate);
        if let Some(text_optimiser) = &mut text_optimiser {
            text_optimiser.set_learning_rate(learning_rate * text_scale);
        }
        let mut rng = Rng::for_item(
            cfg.seed ^ STEP_STREAM ^ round_stream(phase.round),
            step as u64,
        );
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
        let target = match cfg.prediction {
            Prediction::Epsilon => noise,
            Prediction::VPrediction => schedule.velocity(&x0, &noise, &timesteps)?,
        };
        let weights: Vec<f32> = timesteps
            .iter()
            .map(|&t| {
                schedule.loss_weight(t, cfg.prediction, cfg.min_snr_gamma, phase.min_snr_floor)
                    as f32
            })
            .collect();
        let weights = Tensor::from_vec(weights, b, &device)?;
        let timesteps = timestep_tensor(&timesteps, &device)?;
        // A frozen text encoder needs no gradients: stop the backward pass at its output.
        let text_trains = text_optimiser.is_some() && step >= phase.text_frozen_steps;
        // Rebuilt every step: constructors fuse projection weights into copies.
        let text = ClipTextModel::new(text_vb.clone(), &nets.text_cfg)?;
        let unet = UNet2DConditionModel::new(unet_vb.clone(), &nets.unet_cfg)?;
        // The batch's weighted mean loss, the rows of `range` at a time.
        let shard_loss = |range: Range<usize>| -> Result<Vec<Tensor>> {
            let rows = |t: &Tensor| t.narrow(0, range.start, range.len());
            let context = text.forward(&rows(&ids)?)?;
            let context = if text_trains {
                context
            } else {
                context.detach()
            };
            let prediction = unet.forward(&rows(&xt)?, &rows(&timesteps)?, &context)?;
            let per_row = (prediction - rows(&target)?)?
                .sqr()?
                .flatten_from(1)?
                .mean(1)?;
            Ok(vec![((per_row * rows(&weights)?)?.sum_all()? / b as f64)?])
        };
        let (values, gradients) = shards.backward(b, &vars, shard_loss)?;
        let value = values[0];
        unet_optimiser.step(&gradients)?;
        if let Some(text_optimiser) = text_optimiser.as_mut().filter(|_| text_trains) {
            text_optimiser.step(&gradients)?;
        }
        unet_ema.update(step)?;
        text_ema.update(step)?;
        let (shown, log_now) = tracker.record(step, value, &mut report, log)?;
        if log_now {
            log.line(&format!(
                "{name} step {} loss {value:.5} (avg {shown:.5}) lr {:.2e}",
                step + 1,
                learning_rate
            ));
        }
        if checkpoints.every > 0 && (step + 1) % checkpoints.every == 0 && step + 1 < stage.steps {
            checkpoints.save(cfg, inputs.vocab_size, &unet_ema, &text_ema)?;
            log.line(&format!(
                "{name}: checkpoint of the averaged weights at step {}",
                step + 1
            ));
        }
    }
    log.progress().finish();
    unet_ema.apply()?;
    text_ema.apply()?;
    report.seconds = log.elapsed();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DiffusionRound;

    #[test]
    fn rounds_override_the_text_rate_and_floor_only_when_set() {
        let mut cfg = TrainConfig::quick();
        let round = DiffusionRound {
            text_learning_rate_scale: Some(2.0),
            min_snr_floor: Some(0.3),
            ..cfg.diffusion_rounds[0].clone()
        };
        cfg.diffusion_rounds = vec![round, cfg.diffusion_rounds[0].clone()];
        let phases = Phase::all(&cfg);
        let settings: Vec<_> = phases
            .iter()
            .map(|p| {
                (
                    p.round,
                    p.text_frozen_steps,
                    p.text_learning_rate_scale,
                    p.min_snr_floor,
                )
            })
            .collect();
        let (scale, floor) = (cfg.text_learning_rate_scale, cfg.min_snr_floor);
        assert_eq!(
            settings,
            [
                (0, cfg.text_frozen_steps, scale, floor),
                (1, 0, 2.0, 0.3),
                (2, 0, scale, floor)
            ]
        );
        assert_eq!(Phase::rounds(&cfg).count(), 2);
    }
}
