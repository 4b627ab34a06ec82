//! Training settings, with defaults for the full run and a quick smoke-test preset.

use latentd_demo::SamplerConfig;
use serde::{Deserialize, Serialize};

use crate::arch::Architecture;
use crate::{Error, Result};

/// What the UNet learns to predict (diffusers' `prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// The added noise.
    Epsilon,
    /// The velocity `sqrt(alpha_bar) noise - sqrt(1 - alpha_bar) x0` (Salimans & Ho,
    /// 2022): well defined where almost no signal is left, where an epsilon
    /// network's errors are multiplied by `1 / sqrt(alpha_bar)` in the first steps.
    VPrediction,
}

impl Prediction {
    /// The name diffusers' scheduler configs use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Epsilon => "epsilon",
            Self::VPrediction => "v_prediction",
        }
    }
}

/// Optimisation settings of one stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StageConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Peak AdamW learning rate.
    pub learning_rate: f64,
    /// Steps of linear warm-up before the cosine decay (to 10% of the peak).
    pub warmup_steps: usize,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Steps between `train.log` lines.
    pub log_every: usize,
}

impl Default for StageConfig {
    fn default() -> Self {
        Self {
            steps: 1000,
            batch_size: 32,
            learning_rate: 1e-3,
            warmup_steps: 100,
            weight_decay: 0.0,
            log_every: 50,
        }
    }
}

impl StageConfig {
    /// The learning rate at `step` (0-based).
    pub fn learning_rate_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.learning_rate * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.learning_rate * (0.1 + 0.9 * cosine)
    }

    fn check(&self, stage: &str) -> Result<()> {
        if self.steps == 0 || self.batch_size == 0 || self.log_every == 0 {
            return Err(Error::Config(format!(
                "{stage}: steps, batch_size and log_every must be positive"
            )));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(Error::Config(format!(
                "{stage}: learning_rate must be positive"
            )));
        }
        Ok(())
    }
}

/// A round of stage 1b (decoder fine-tuning).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DecoderRound {
    /// Optimisation settings of the round (its keys sit at the round's top level).
    #[serde(flatten)]
    pub stage: StageConfig,
    /// Extra reconstruction weight on objects' outlines: a pixel's weight grows
    /// by `outline_weight` times how far its foreground mask differs from the
    /// mask's 3x3 mean, which is largest at corners. Small squares and
    /// triangles differ from circles only there; 0 for none.
    pub outline_weight: f64,
}

/// A stage-2 continuation round: trains the UNet and the text encoder further
/// from the previous weights (their moving average) with a fresh optimiser,
/// warm-up and cosine decay, on newly drawn scenes and captions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DiffusionRound {
    /// Optimisation settings of the round.
    pub stage: StageConfig,
    /// How the round's scenes and captions are drawn.
    pub sampler: SamplerConfig,
    /// The text encoder's learning rate as a multiple of the UNet's in this
    /// round; `None` keeps the config's `text_learning_rate_scale`.
    pub text_learning_rate_scale: Option<f64>,
    /// The round's floor on the min-SNR x0-error weight; `None` keeps the
    /// config's `min_snr_floor`.
    pub min_snr_floor: Option<f64>,
}

/// Everything that determines a training run; the same settings give the same model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// Seed of the data, the initialisation and the noise.
    pub seed: u64,
    /// Image side in pixels.
    pub image_size: u32,
    /// How the synthetic scenes and captions of the tokenizer and autoencoder
    /// stages are drawn.
    pub sampler: SamplerConfig,
    /// How the scenes and captions stage 2 trains on are drawn.
    pub diffusion_sampler: SamplerConfig,
    /// Network sizes.
    pub arch: Architecture,
    /// Stage 1: the autoencoder.
    pub vae: StageConfig,
    /// Weight of the KL term (mean over latent elements) against the L1
    /// reconstruction loss (mean over pixels).
    pub kl_weight: f64,
    /// Extra weight of object pixels in the reconstruction loss (background
    /// pixels weigh 1, object pixels `1 + foreground_weight`).
    pub foreground_weight: f64,
    /// Stage 1b: rounds of fine-tuning the decoder on latent means with the encoder
    /// frozen. Each round starts from the previous one's weights with a fresh
    /// optimiser, warm-up and cosine decay (a warm restart). The encoder and the
    /// scaling factor are fixed before this stage, so stage 2 does not depend on it.
    pub decoder: Vec<DecoderRound>,
    /// Stage 2: the UNet and the text encoder.
    pub diffusion: StageConfig,
    /// Stage-2 continuation rounds, run in order after `diffusion`; the text
    /// encoder trains from each round's first step (no `text_frozen_steps`).
    pub diffusion_rounds: Vec<DiffusionRound>,
    /// Stage-2 training target.
    pub prediction: Prediction,
    /// Share of captions replaced by the empty prompt (for classifier-free guidance).
    pub caption_dropout: f64,
    /// Scenes encoded once by the frozen autoencoder and sampled by stage 2.
    pub latent_examples: usize,
    /// Captions used to learn the tokenizer's merges.
    pub tokenizer_captions: usize,
    /// Images encoded to measure the latents' standard deviation (the scaling factor).
    pub scale_images: usize,
    /// Decay of the exponential moving average of the stage-2 weights that is saved.
    pub ema_decay: f64,
    /// Min-SNR loss weighting (`min(snr, gamma) / snr` for epsilon, `/ (snr + 1)` for
    /// v), or plain MSE when `None`.
    pub min_snr_gamma: Option<f64>,
    /// Lower bound of the min-SNR weight on the x0 error (see
    /// [`crate::schedule::NoiseSchedule::loss_weight`]); 0 for plain min-SNR.
    pub min_snr_floor: f64,
    /// The text encoder's learning rate as a multiple of the UNet's: 1 trains both
    /// alike (the paper's joint recipe), 0 keeps the text encoder's seeded initial
    /// weights. Trained at the UNet's rate it erases the difference between
    /// position words before the UNet uses them (MODEL_CARD.md), hence 0.1.
    pub text_learning_rate_scale: f64,
    /// Stage-2 steps at the start during which the text encoder stays at its
    /// seeded initial weights, so the UNet first learns on the untrained
    /// encoder's features, where position words still differ; 0 trains both from
    /// the first step.
    pub text_frozen_steps: usize,
    /// Training timesteps stage 2 draws from, uniformly: `[first, end)` (the full
    /// schedule is `[0, 1000)`); a narrower range is for experiments.
    pub timestep_range: [usize; 2],
    /// Stage-2 steps between checkpoints of the averaged weights into the output
    /// folder (a loadable pipeline while training goes on); 0 for none.
    pub checkpoint_every: usize,
    /// Parts each training batch is split into, whose forward and backward
    /// passes run in parallel on rayon's threads (gradients summed). Results
    /// depend on it only through floating-point rounding and never on the
    /// machine's core count; 2 uses both cores of the development VM.
    pub shards: usize,
}

impl Default for TrainConfig {
    /// The full run (about 2.1 h in one process on two idle CPU cores: 5742 s
    /// measured before the third and fourth continuation rounds and the fourth
    /// decoder round, which add 1112 s, 512 s and 273 s; MODEL_CARD.md).
    fn default() -> Self {
        Self {
            seed: 20_251_126,
            image_size: 32,
            sampler: SamplerConfig::default(),
            // Every one-object caption names its region: position words are seen
            // twice as often as in the held-out captions (50%).
            diffusion_sampler: SamplerConfig {
                position_stated: 100,
                ..SamplerConfig::default()
            },
            arch: Architecture::default(),
            vae: StageConfig {
                steps: 2400,
                batch_size: 8,
                learning_rate: 2e-3,
                warmup_steps: 50,
                weight_decay: 0.0,
                log_every: 25,
            },
            kl_weight: 1e-4,
            foreground_weight: 10.0,
            // The last round weighs objects' outlines, where small squares and
            // triangles come back rounded (MODEL_CARD.md).
            decoder: [
                (400, 5e-4, 25, 0.0),
                (1500, 3e-4, 50, 0.0),
                (2500, 2e-4, 50, 0.0),
                (2500, 1e-4, 50, 40.0),
            ]
            .into_iter()
            .map(
                |(steps, learning_rate, log_every, outline_weight)| DecoderRound {
                    stage: StageConfig {
                        steps,
                        batch_size: 8,
                        learning_rate,
                        warmup_steps: 20,
                        weight_decay: 0.0,
                        log_every,
                    },
                    outline_weight,
                },
            )
            .collect(),
            diffusion: StageConfig {
                steps: 9000,
                batch_size: 32,
                learning_rate: 1e-3,
                warmup_steps: 150,
                weight_decay: 0.0,
                log_every: 25,
            },
            // Warm restarts at lower rates on captions in which three of four
            // one-object captions name their region, so the model learns that
            // a caption without one means a single object anywhere. The second
            // weighs the noisiest timesteps (where the layout is decided) and
            // trains the text encoder at the UNet's rate: that is when
            // relations ("left of", "above") are learned. The third does the
            // same on captions that state every object's size and more often
            // name two objects: guidance draws objects larger than their stated
            // size, and stating sizes in training is what held them to it. The
            // fourth, a short one on the same captions, drops the weight on the
            // noisiest timesteps again (plain min-SNR): with the layout learned,
            // it refines shapes, colours and counts (MODEL_CARD.md).
            diffusion_rounds: {
                let sized = SamplerConfig {
                    two_objects: 75,
                    size_stated: 100,
                    ..SamplerConfig::default()
                };
                [
                    (4500, 3e-4, None, None, SamplerConfig::default()),
                    (4500, 1e-4, Some(1.0), Some(1.0), SamplerConfig::default()),
                    (4500, 1e-4, Some(1.0), Some(1.0), sized.clone()),
                    (1500, 1e-4, Some(1.0), None, sized),
                ]
            }
            .into_iter()
            .map(
                |(steps, learning_rate, text_learning_rate_scale, min_snr_floor, sampler)| {
                    DiffusionRound {
                        stage: StageConfig {
                            steps,
                            batch_size: 32,
                            learning_rate,
                            warmup_steps: 100,
                            weight_decay: 0.0,
                            log_every: 25,
                        },
                        sampler: SamplerConfig {
                            position_stated: 75,
                            ..sampler
                        },
                        text_learning_rate_scale,
                        min_snr_floor,
                    }
                },
            )
            .collect(),
            prediction: Prediction::VPrediction,
            caption_dropout: 0.1,
            latent_examples: 40_000,
            tokenizer_captions: 20_000,
            scale_images: 1024,
            ema_decay: 0.999,
            min_snr_gamma: Some(5.0),
            min_snr_floor: 0.0,
            text_learning_rate_scale: 0.1,
            text_frozen_steps: 1500,
            timestep_range: [0, 1000],
            checkpoint_every: 500,
            shards: 2,
        }
    }
}

impl TrainConfig {
    /// Reads a JSON configuration; missing keys take the defaults.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(crate::error::io(path))?;
        serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_owned(),
            source,
        })
    }

    /// A smoke test: tiny networks, a few steps, seconds of CPU time.
    pub fn quick() -> Self {
        Self {
            arch: Architecture::tiny(),
            vae: StageConfig {
                steps: 20,
                batch_size: 4,
                learning_rate: 3e-3,
                warmup_steps: 2,
                weight_decay: 0.0,
                log_every: 10,
            },
            decoder: vec![DecoderRound {
                stage: StageConfig {
                    steps: 10,
                    batch_size: 4,
                    learning_rate: 1e-3,
                    warmup_steps: 2,
                    weight_decay: 0.0,
                    log_every: 5,
                },
                outline_weight: 40.0,
            }],
            diffusion: StageConfig {
                steps: 20,
                batch_size: 8,
                learning_rate: 2e-3,
                warmup_steps: 2,
                weight_decay: 0.0,
                log_every: 10,
            },
            diffusion_rounds: vec![DiffusionRound {
                stage: StageConfig {
                    steps: 6,
                    batch_size: 8,
                    learning_rate: 1e-3,
                    warmup_steps: 2,
                    weight_decay: 0.0,
                    log_every: 3,
                },
                sampler: SamplerConfig::default(),
                text_learning_rate_scale: None,
                min_snr_floor: None,
            }],
            latent_examples: 64,
            tokenizer_captions: 200,
            scale_images: 64,
            ema_decay: 0.9,
            text_frozen_steps: 10,
            checkpoint_every: 20,
            ..Self::default()
        }
    }

    /// Rejects settings that cannot train.
    pub fn check(&self) -> Result<()> {
        self.vae.check("vae")?;
        for round in &self.decoder {
            round.stage.check("decoder")?;
        }
        self.diffusion.check("diffusion")?;
        if self.shards == 0 {
            return Err(Error::Config("shards must be at least 1".into()));
        }
        for round in &self.diffusion_rounds {
            round.stage.check("diffusion round")?;
        }
        non_negative(
            "outline_weight",
            self.decoder.iter().map(|r| r.outline_weight),
        )?;
        let rounds = &self.diffusion_rounds;
        non_negative(
            "min_snr_floor",
            std::iter::once(self.min_snr_floor)
                .chain(rounds.iter().filter_map(|r| r.min_snr_floor)),
        )?;
        non_negative(
            "text_learning_rate_scale",
            std::iter::once(self.text_learning_rate_scale)
                .chain(rounds.iter().filter_map(|r| r.text_learning_rate_scale)),
        )?;
        let factor = self.arch.downsampling_factor();
        if !(self.image_size as usize).is_multiple_of(factor) {
            return Err(Error::Config(format!(
                "image_size {} is not a multiple of the autoencoder's factor {factor}",
                self.image_size
            )));
        }
        if !(0.0..1.0).contains(&self.caption_dropout) || !(0.0..1.0).contains(&self.ema_decay) {
            return Err(Error::Config(
                "caption_dropout and ema_decay must be in [0, 1)".into(),
            ));
        }
        let [first, end] = self.timestep_range;
        if first >= end || end > crate::schedule::TRAIN_TIMESTEPS {
            return Err(Error::Config(format!(
                "timestep_range [{first}, {end}) must be a non-empty part of [0, {})",
                crate::schedule::TRAIN_TIMESTEPS
            )));
        }
        if self.latent_examples == 0 || self.tokenizer_captions == 0 || self.scale_images == 0 {
            return Err(Error::Config(
                "latent_examples, tokenizer_captions and scale_images must be positive".into(),
            ));
        }
        Ok(())
    }

    /// Side of the latents.
    pub fn latent_size(&self) -> usize {
        self.image_size as usize / self.arch.downsampling_factor()
    }
}

/// Rejects a setting whose values (the config's and its rounds') are not all
/// finite and zero or positive.
fn non_negative(name: &str, values: impl IntoIterator<Item = f64>) -> Result<()> {
    if values
        .into_iter()
        .any(|value| !(value.is_finite() && value >= 0.0))
    {
        return Err(Error::Config(format!("{name} must be zero or positive")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_rate_warms_up_then_decays() {
        let s = StageConfig {
            steps: 110,
            warmup_steps: 10,
            learning_rate: 1.0,
            ..StageConfig::default()
        };
        assert!((s.learning_rate_at(0) - 0.1).abs() < 1e-12);
        assert!((s.learning_rate_at(9) - 1.0).abs() < 1e-12);
        assert!((s.learning_rate_at(10) - 1.0).abs() < 1e-12);
        assert!((s.learning_rate_at(60) - 0.55).abs() < 1e-12);
        assert!((s.learning_rate_at(110) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn presets_are_valid() {
        TrainConfig::default().check().unwrap();
        TrainConfig::quick().check().unwrap();
        assert_eq!(TrainConfig::default().latent_size(), 8);
        let bad = TrainConfig {
            image_size: 30,
            ..TrainConfig::quick()
        };
        assert!(bad.check().is_err());
        for range in [[500, 500], [0, 1001]] {
            let bad = TrainConfig {
                timestep_range: range,
                ..TrainConfig::quick()
            };
            assert!(bad.check().is_err(), "{range:?}");
        }
        for scale in [-0.5, f64::NAN] {
            let bad = TrainConfig {
                text_learning_rate_scale: scale,
                ..TrainConfig::quick()
            };
            assert!(bad.check().is_err(), "{scale}");
            let mut bad_round = TrainConfig::quick();
            bad_round.diffusion_rounds[0].text_learning_rate_scale = Some(scale);
            assert!(bad_round.check().is_err(), "round {scale}");
            let mut bad_floor = TrainConfig::quick();
            bad_floor.diffusion_rounds[0].min_snr_floor = Some(scale);
            assert!(bad_floor.check().is_err(), "floor {scale}");
            let mut bad_outline = TrainConfig::quick();
            bad_outline.decoder[0].outline_weight = scale;
            assert!(bad_outline.check().is_err(), "outline {scale}");
        }
    }

    #[test]
    fn decoder_rounds_read_flat_json() {
        // A round's optimisation keys sit beside its outline weight; configs
        // written before outline weights existed still read (weight 0).
        let cfg: TrainConfig = serde_json::from_str(
            r#"{"decoder": [{"steps": 7, "learning_rate": 1e-4},
                            {"steps": 9, "outline_weight": 40}]}"#,
        )
        .unwrap();
        assert_eq!(cfg.decoder.len(), 2);
        assert_eq!(
            (cfg.decoder[0].stage.steps, cfg.decoder[0].outline_weight),
            (7, 0.0)
        );
        assert_eq!(cfg.decoder[0].stage.learning_rate, 1e-4);
        assert_eq!(
            (cfg.decoder[1].stage.steps, cfg.decoder[1].outline_weight),
            (9, 40.0)
        );
        assert_eq!(
            cfg.decoder[1].stage.batch_size,
            StageConfig::default().batch_size
        );
        let defaults = TrainConfig::default();
        let json = serde_json::to_string(&defaults).unwrap();
        let back: TrainConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, defaults);
    }
}
