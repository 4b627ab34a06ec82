//! Prompt adherence of a trained model on held-out captions, judged by
//! latentd-demo's analyser, and the autoencoder's reconstruction quality.

use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use latentd_demo::{
    analyse, caption, parse, render, sample_split, Arrangement, Rng, SamplerConfig, SceneSpec,
    Split,
};
use latentd_models::pipeline::{DiffusionModel, StableDiffusion};
use serde::{Deserialize, Serialize};

use crate::data::to_planar;
use crate::generate::{generate, to_demo_image, Job};
use crate::{Error, Result};

/// Seed of the held-out evaluation captions (fixed, so runs are comparable).
pub const CAPTION_SEED: u64 = 0x4556_414C;
/// Jobs stacked into one UNet call during evaluation.
const CHUNK: usize = 16;

/// How often one attribute was right among the images whose caption states it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributeScore {
    /// Attribute name as the analyser reports it (`colour`, `shape`, ...).
    pub name: String,
    /// Images whose caption states the attribute.
    pub checked: usize,
    /// Of those, images that show it.
    pub correct: usize,
}

/// Adherence on one kind of caption.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KindScore {
    /// Images generated for captions of this kind.
    pub images: usize,
    /// Of those, images matching every stated attribute.
    pub matched: usize,
    /// Per-attribute accuracy on these images.
    pub attributes: Vec<AttributeScore>,
}

impl KindScore {
    fn new() -> Self {
        Self {
            images: 0,
            matched: 0,
            attributes: empty_scores(),
        }
    }

    fn add(&mut self, verdict: &latentd_demo::Verdict) {
        self.images += 1;
        self.matched += usize::from(verdict.matches_all());
        tally(&mut self.attributes, verdict);
    }
}

/// Index of a caption's kind in [`EvalReport::by_kind`].
fn kind_index(spec: &SceneSpec) -> usize {
    match spec.arrangement {
        Arrangement::One {
            position: Some(_), ..
        } => 0,
        Arrangement::One { position: None, .. } => 1,
        Arrangement::Two { .. } => 2,
    }
}

/// Adherence at one guidance scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Classifier-free guidance scale used.
    pub guidance: f64,
    /// Images generated (captions times seeds).
    pub images: usize,
    /// Images matching every stated attribute.
    pub matched: usize,
    /// `matched / images`.
    pub match_rate: f64,
    /// Per-attribute accuracy.
    pub attributes: Vec<AttributeScore>,
    /// The same split by caption kind: one object in a named region (`[0]`), one
    /// object anywhere (`[1]`), two objects in a relation (`[2]`; such an image
    /// must also bind each colour, shape and size to the right object and place
    /// the pair as stated).
    pub by_kind: [KindScore; 3],
    /// Up to ten captions (with seeds) whose image missed something.
    pub failures: Vec<(String, u64)>,
    /// Wall-clock seconds per image, batched generation included.
    pub seconds_per_image: f64,
}

/// One zeroed score per attribute the analyser reports.
fn empty_scores() -> Vec<AttributeScore> {
    latentd_demo::Verdict::default()
        .attributes()
        .iter()
        .map(|(name, _)| AttributeScore {
            name: (*name).to_owned(),
            checked: 0,
            correct: 0,
        })
        .collect()
}

/// Adds one verdict to the per-attribute scores.
fn tally(scores: &mut [AttributeScore], verdict: &latentd_demo::Verdict) {
    for (score, (_, outcome)) in scores.iter_mut().zip(verdict.attributes()) {
        if let Some(ok) = outcome {
            score.checked += 1;
            score.correct += usize::from(ok);
        }
    }
}

/// `n` distinct held-out captions (never seen in training), drawn with
/// [`CAPTION_SEED`] in order of first appearance. Repeats are skipped: the
/// short captions ("a cyan triangle") come up again and again, and a repeated
/// caption with the same seeds gives the same images, which would count one
/// outcome several times.
pub fn held_out_captions(n: usize) -> Result<Vec<String>> {
    /// Draws allowed per caption before giving up (the held-out split has
    /// tens of thousands of captions; this is only reached for absurd `n`).
    const DRAWS_PER_CAPTION: usize = 1000;
    let mut rng = Rng::new(CAPTION_SEED);
    let cfg = SamplerConfig::default();
    let mut seen = std::collections::HashSet::new();
    let mut captions = Vec::with_capacity(n);
    for _ in 0..n.saturating_mul(DRAWS_PER_CAPTION) {
        if captions.len() == n {
            break;
        }
        let text = caption(&sample_split(&mut rng, &cfg, Split::HeldOut)?);
        if seen.insert(text.clone()) {
            captions.push(text);
        }
    }
    if captions.len() < n {
        return Err(Error::Config(format!(
            "found only {} distinct held-out captions of {n}",
            captions.len()
        )));
    }
    Ok(captions)
}

/// Loads the pipeline folder `model_dir` and scores `n_captions` held-out
/// captions times `seeds` at `guidance` with default settings (native size,
/// 20 steps of the folder's scheduler).
pub fn evaluate(
    model_dir: &Path,
    n_captions: usize,
    seeds: &[u64],
    guidance: f64,
) -> Result<EvalReport> {
    let pipe = StableDiffusion::load(model_dir, &Device::Cpu)?;
    evaluate_pipeline(&pipe, &held_out_captions(n_captions)?, seeds, guidance)
}

/// Scores `captions` times `seeds` on an already loaded pipeline.
pub fn evaluate_pipeline(
    pipe: &StableDiffusion,
    captions: &[String],
    seeds: &[u64],
    guidance: f64,
) -> Result<EvalReport> {
    if captions.is_empty() || seeds.is_empty() {
        return Err(Error::Config("evaluation needs captions and seeds".into()));
    }
    let jobs: Vec<Job> = captions
        .iter()
        .flat_map(|c| {
            seeds.iter().map(move |&seed| Job {
                prompt: c.clone(),
                seed,
            })
        })
        .collect();
    let start = Instant::now();
    let images = generate(pipe, &jobs, guidance, CHUNK)?;
    let seconds = start.elapsed().as_secs_f64();
    let mut attributes = empty_scores();
    let mut matched = 0;
    let mut by_kind = [KindScore::new(), KindScore::new(), KindScore::new()];
    let mut failures = Vec::new();
    for (job, image) in jobs.iter().zip(&images) {
        let spec =
            parse(&job.prompt).map_err(|e| Error::Config(format!("{:?}: {e}", job.prompt)))?;
        let verdict = analyse(&to_demo_image(image)?, &spec);
        tally(&mut attributes, &verdict);
        let all = verdict.matches_all();
        by_kind[kind_index(&spec)].add(&verdict);
        if all {
            matched += 1;
        } else if failures.len() < 10 {
            failures.push((job.prompt.clone(), job.seed));
        }
    }
    Ok(EvalReport {
        guidance,
        images: jobs.len(),
        matched,
        match_rate: matched as f64 / jobs.len() as f64,
        attributes,
        by_kind,
        failures,
        seconds_per_image: seconds / jobs.len() as f64,
    })
}

/// How well the autoencoder alone preserves the scenes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReconstructionReport {
    /// Scenes encoded and decoded.
    pub images: usize,
    /// Mean PSNR in dB over 8-bit pixels.
    pub psnr: f64,
    /// Share of reconstructions that still match every attribute of their
    /// caption: an upper bound on what generation through this autoencoder can reach.
    pub match_rate: f64,
    /// Per-attribute accuracy of the reconstructions.
    pub attributes: Vec<AttributeScore>,
}

/// Encodes `n` held-out scenes to their latent means, decodes and quantises
/// them, and compares with the originals.
pub fn reconstruction(pipe: &StableDiffusion, n: usize) -> Result<ReconstructionReport> {
    let mut rng = Rng::new(CAPTION_SEED ^ 1);
    let cfg = SamplerConfig::default();
    let side = pipe.info().native_width as u32;
    let (mut total, mut matched) = (0.0, 0);
    let mut attributes = empty_scores();
    for _ in 0..n {
        let scene = sample_split(&mut rng, &cfg, Split::HeldOut)?;
        let original = render(&scene, side)?;
        let s = side as usize;
        let input = Tensor::from_vec(to_planar(&original), (1, 3, s, s), pipe.device())?;
        let latents = pipe.encode_images(&input)?;
        let decoded = pipe.decode(&latents)?;
        let recon = decoded
            .first()
            .ok_or_else(|| Error::Config("the decoder returned no image".into()))?;
        total += psnr(original.as_bytes(), &recon.data);
        let spec = parse(&caption(&scene)).map_err(|e| Error::Config(e.to_string()))?;
        let verdict = analyse(&to_demo_image(recon)?, &spec);
        tally(&mut attributes, &verdict);
        matched += usize::from(verdict.matches_all());
    }
    let images = n.max(1);
    Ok(ReconstructionReport {
        images: n,
        psnr: total / images as f64,
        match_rate: matched as f64 / images as f64,
        attributes,
    })
}

/// Mean PSNR (dB, 8-bit pixels) of the autoencoder's reconstructions of `n`
/// held-out scenes (see [`reconstruction`]).
pub fn reconstruction_psnr(pipe: &StableDiffusion, n: usize) -> Result<f64> {
    Ok(reconstruction(pipe, n)?.psnr)
}

/// PSNR of two equally long 8-bit buffers (capped at 99 dB for identical ones).
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    let mse = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum::<f64>()
        / a.len().max(1) as f64;
    if mse == 0.0 {
        99.0
    } else {
        (10.0 * (255.0f64.powi(2) / mse).log10()).min(99.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psnr_values() {
        assert_eq!(psnr(&[1, 2, 3], &[1, 2, 3]), 99.0);
        // One level off everywhere: 20 log10(255) = 48.13 dB.
        assert!((psnr(&[10, 20], &[11, 21]) - 48.1308).abs() < 1e-3);
    }

    #[test]
    fn held_out_captions_are_held_out_and_fixed() {
        let a = held_out_captions(20).unwrap();
        assert_eq!(a, held_out_captions(20).unwrap());
        assert!(a
            .iter()
            .all(|c| latentd_demo::split_of(c) == Split::HeldOut));
    }

    #[test]
    fn held_out_captions_are_distinct() {
        let a = held_out_captions(300).unwrap();
        let distinct: std::collections::HashSet<&String> = a.iter().collect();
        assert_eq!(distinct.len(), 300);
        // The first captions of a longer list are the shorter list.
        assert_eq!(a[..20], held_out_captions(20).unwrap()[..]);
    }
}
