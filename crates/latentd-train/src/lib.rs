//! Training of latentd's built-in demo model: a small latent diffusion model
//! on synthetic shape scenes (`latentd-demo`), in two stages as in the LDM
//! paper, saved as a diffusers `StableDiffusionPipeline` folder.
//!
//! 1. A CLIP-format BPE tokenizer is learned from the caption grammar.
//! 2. Stage 1 trains a KL-regularised autoencoder (downsampling factor 4), then
//!    fine-tunes its decoder in rounds.
//! 3. Stage 2 trains a text-conditioned UNet with cross-attention and a CLIP
//!    text encoder jointly in the frozen autoencoder's latent space
//!    (the configured prediction target, 10% empty captions for
//!    classifier-free guidance), then in continuation rounds.
//!
//! Everything is seeded: the same [`TrainConfig`] gives the same files.

pub mod arch;
pub mod config;
pub mod data;
mod decoder_stage;
mod diffusion_stage;
mod ema;
pub mod error;
pub mod eval;
pub mod generate;
pub mod grid;
pub mod init;
pub mod progress;
pub mod report;
pub mod save;
pub mod schedule;
mod shards;
pub mod tokenizer;
mod vae_stage;

use std::path::Path;

use latentd_demo::{caption, sample_split, Rng, Split};
use latentd_models::text::ClipTokenizer;

pub use arch::Architecture;
pub use config::{DecoderRound, DiffusionRound, Prediction, StageConfig, TrainConfig};
pub use error::{Error, Result};
pub use eval::{
    evaluate, evaluate_pipeline, reconstruction, reconstruction_psnr, AttributeScore, EvalReport,
    KindScore, ReconstructionReport,
};
pub use progress::{Bars, Progress, Silent};
pub use report::{StageReport, TrainReport};
pub use shards::one_thread_per_shard;

use diffusion_stage::Phase;
use error::io;
use progress::Log;
use tokenizer::{word_counts, BpeVocabulary};

/// Seed offset of the captions the tokenizer learns from.
const TOKENIZER_STREAM: u64 = 0x544F_4B01;
/// Spellings `latentd_demo::parse` accepts besides the canonical words.
const ALIAS_WORDS: &str = "to centre middle corner grey";

/// Trains the tokenizer and both stages and writes the pipeline folder to
/// `out` (created if needed), with `train.log`, `train_config.json` and
/// `train_report.json` beside the model files.
pub fn train(cfg: &TrainConfig, out: &Path, progress: &dyn Progress) -> Result<TrainReport> {
    cfg.check()?;
    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut log = Log::create(&out.join("train.log"), progress)?;
    save::write_json(
        &out.join("train_config.json"),
        &serde_json::to_value(cfg).map_err(|source| Error::Json {
            path: out.join("train_config.json"),
            source,
        })?,
    )?;

    let vocabulary = learn_vocabulary(cfg)?;
    let tokenizer_dir = out.join("tokenizer");
    vocabulary.save(&tokenizer_dir, cfg.arch.max_length)?;
    let tokenizer = ClipTokenizer::from_dir(&tokenizer_dir)?;
    log.line(&format!(
        "tokenizer: {} tokens ({} merges) from {} captions",
        vocabulary.len(),
        vocabulary.merges.len(),
        cfg.tokenizer_captions
    ));

    let mut vae = vae_stage::train_vae(cfg, &mut log)?;
    let decoder = cfg
        .decoder
        .iter()
        .map(|round| decoder_stage::finetune_decoder(cfg, round, &mut vae, &mut log))
        .collect::<Result<Vec<_>>>()?;
    save::save_component(
        &out.join("vae"),
        &vae.config_json(cfg),
        &vae.varmap,
        "diffusion_pytorch_model.safetensors",
    )?;
    save::save_pipeline_files(out, cfg.prediction)?;

    let model = vae.model()?;
    let inputs = diffusion_stage::Inputs {
        vae: &model,
        scaling_factor: vae.scaling_factor,
        tokenizer: &tokenizer,
        vocab_size: vocabulary.len(),
    };
    let nets = diffusion_stage::DiffusionNets::seeded(cfg, vocabulary.len())?;
    let mut diffusion =
        train_and_save_diffusion(cfg, out, &nets, Phase::all(cfg), &inputs, &mut log)?;
    let main_stage = diffusion.remove(0);
    let (unet_parameters, text_encoder_parameters) = nets.parameters();

    let report = TrainReport {
        vocab_size: vocabulary.len(),
        vae: vae.report,
        decoder,
        scaling_factor: vae.scaling_factor,
        diffusion: main_stage,
        diffusion_rounds: diffusion,
        unet_parameters,
        text_encoder_parameters,
        seconds: log.elapsed(),
    };
    let report_path = out.join("train_report.json");
    let value = serde_json::to_value(&report).map_err(|source| Error::Json {
        path: report_path.clone(),
        source,
    })?;
    save::write_json(&report_path, &value)?;
    log.line(&format!(
        "done in {:.0} s; model in {}",
        report.seconds,
        out.display()
    ));
    Ok(report)
}

/// Runs the rounds of stage 1b in `cfg.decoder` on the autoencoder saved in
/// `out/vae` and saves it back: the same computation as inside [`train`] (each
/// round reads only the previous weights and its own seeded data), for a folder
/// whose decoder is to be tuned further. Appends to `out/train.log`.
pub fn finetune_decoder_in(
    cfg: &TrainConfig,
    out: &Path,
    progress: &dyn Progress,
) -> Result<Vec<StageReport>> {
    cfg.check()?;
    let mut log = Log::append(&out.join("train.log"), progress)?;
    let dir = out.join("vae");
    let mut vae = vae_stage::TrainedVae::load(&dir, 0)?;
    let reports = cfg
        .decoder
        .iter()
        .map(|round| decoder_stage::finetune_decoder(cfg, round, &mut vae, &mut log))
        .collect::<Result<Vec<_>>>()?;
    save::save_component(
        &dir,
        &vae.config_json(cfg),
        &vae.varmap,
        "diffusion_pytorch_model.safetensors",
    )?;
    Ok(reports)
}

/// Runs stage 2 alone (the main stage, then `cfg.diffusion_rounds`) on a
/// folder whose tokenizer and autoencoder are already trained (by [`train`]),
/// and writes the UNet and text encoder: the same computation as inside
/// [`train`], since stage 2 reads only the tokenizer, the frozen encoder and its
/// own seeded draws. Appends to `out/train.log`; returns one report per phase.
pub fn train_diffusion_in(
    cfg: &TrainConfig,
    out: &Path,
    progress: &dyn Progress,
) -> Result<Vec<StageReport>> {
    in_trained_folder(cfg, out, progress, |inputs, log| {
        let nets = diffusion_stage::DiffusionNets::seeded(cfg, inputs.vocab_size)?;
        train_and_save_diffusion(cfg, out, &nets, Phase::all(cfg), inputs, log)
    })
}

/// Runs `cfg.diffusion_rounds` after the first `done` of them, starting from the
/// UNet and text encoder saved in `out`, and writes them back: for a folder
/// whose main stage 2 and first `done` rounds are trained, the same computation
/// as the rest of [`train`] (each round draws from its own seeded streams).
/// Appends to `out/train.log`; returns one report per round run.
pub fn continue_diffusion_in(
    cfg: &TrainConfig,
    out: &Path,
    done: usize,
    progress: &dyn Progress,
) -> Result<Vec<StageReport>> {
    if done > cfg.diffusion_rounds.len() {
        return Err(Error::Config(format!(
            "{done} rounds done, but the config has {}",
            cfg.diffusion_rounds.len()
        )));
    }
    in_trained_folder(cfg, out, progress, |inputs, log| {
        let nets = diffusion_stage::DiffusionNets::load(cfg, inputs.vocab_size, out)?;
        let phases = Phase::rounds(cfg).skip(done).collect();
        train_and_save_diffusion(cfg, out, &nets, phases, inputs, log)
    })
}

/// Loads the tokenizer and the frozen autoencoder of a trained folder and runs
/// `train` on them.
fn in_trained_folder(
    cfg: &TrainConfig,
    out: &Path,
    progress: &dyn Progress,
    train: impl FnOnce(&diffusion_stage::Inputs, &mut Log) -> Result<Vec<StageReport>>,
) -> Result<Vec<StageReport>> {
    cfg.check()?;
    let mut log = Log::append(&out.join("train.log"), progress)?;
    let tokenizer = ClipTokenizer::from_dir(&out.join("tokenizer"))?;
    let vocab_path = out.join("tokenizer").join("vocab.json");
    let vocab: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&vocab_path).map_err(io(&vocab_path))?)
            .map_err(|source| Error::Json {
                path: vocab_path.clone(),
                source,
            })?;
    let vae = vae_stage::TrainedVae::load(&out.join("vae"), 0)?;
    let model = vae.model()?;
    let inputs = diffusion_stage::Inputs {
        vae: &model,
        scaling_factor: vae.scaling_factor,
        tokenizer: &tokenizer,
        vocab_size: vocab.len(),
    };
    // The scheduler config describes stage 2's noise schedule.
    save::save_pipeline_files(out, cfg.prediction)?;
    let reports = train(&inputs, &mut log)?;
    log.line(&format!("stage 2 done; model in {}", out.display()));
    Ok(reports)
}

/// Trains `nets` through `phases` in order and writes the UNet and the text
/// encoder into `out`; returns one report per phase.
fn train_and_save_diffusion(
    cfg: &TrainConfig,
    out: &Path,
    nets: &diffusion_stage::DiffusionNets,
    phases: Vec<Phase>,
    inputs: &diffusion_stage::Inputs,
    log: &mut Log,
) -> Result<Vec<StageReport>> {
    let checkpoints = diffusion_stage::Checkpoints {
        out,
        every: cfg.checkpoint_every,
    };
    let reports = phases
        .iter()
        .map(|phase| diffusion_stage::train_phase(cfg, phase, nets, inputs, &checkpoints, log))
        .collect::<Result<Vec<_>>>()?;
    save::save_component(
        &out.join("unet"),
        &cfg.arch.unet_config(cfg.latent_size()),
        &nets.unet,
        "diffusion_pytorch_model.safetensors",
    )?;
    save::save_component(
        &out.join("text_encoder"),
        &cfg.arch.text_config(inputs.vocab_size),
        &nets.text,
        "model.safetensors",
    )?;
    Ok(reports)
}

/// Learns the BPE vocabulary from training captions and the parser's aliases.
fn learn_vocabulary(cfg: &TrainConfig) -> Result<BpeVocabulary> {
    let mut rng = Rng::new(cfg.seed ^ TOKENIZER_STREAM);
    let captions = (0..cfg.tokenizer_captions)
        .map(|_| {
            Ok(caption(&sample_split(
                &mut rng,
                &cfg.sampler,
                Split::Train,
            )?))
        })
        .collect::<Result<Vec<_>>>()?;
    let words = word_counts(
        captions
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(ALIAS_WORDS)),
    );
    Ok(BpeVocabulary::train(&words))
}
