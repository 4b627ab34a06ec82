//! `latentd generate`: one generation from the command line, for any model family.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use latentd_engine::request::{validate, GenerateRequest};
use latentd_engine::{input_image, EngineConfig};
use latentd_models::pipeline::{generate, load_model_from, LoadOptions, Precision};
use latentd_models::schedulers::{PredictionType, SchedulerKind};

use super::{parse_size, EXIT_USAGE};
use latentd_engine::png_meta::{encode_png, ImageMetadata};

/// Arguments of `latentd generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// A diffusers-layout pipeline folder of any supported family, or a single-file
    /// Stable Diffusion 1.x/2.x checkpoint (.safetensors, .ckpt) (default: the built-in
    /// model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// For a single-file --model: a diffusers folder whose configs, tokenizer and
    /// scheduler replace the inferred ones (the file supplies the weights).
    #[arg(long, value_name = "DIR", requires = "model")]
    pub model_config: Option<PathBuf>,
    /// For a single-file --model: the scheduler's prediction type (epsilon,
    /// v_prediction, sample); e.g. epsilon for SD 2.x base checkpoints.
    #[arg(long, requires = "model", value_parser = super::serve::prediction_type)]
    pub prediction_type: Option<PredictionType>,
    /// The prompt (text-conditioned models only).
    #[arg(long)]
    pub prompt: Option<String>,
    /// What to steer away from (default: the empty prompt).
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// An input image, a PNG, JPEG or WebP file: for Stable Diffusion the image to
    /// start from (img2img; with --mask, inpainting), resized to --width/--height
    /// (default: its own size rounded down to the model's multiple); for
    /// super-resolution the image to upscale, at its own size.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Inpainting mask, an image file the size of --image: white is repainted, black
    /// kept.
    #[arg(long, requires = "image")]
    pub mask: Option<PathBuf>,
    /// How much of --image to repaint, in (0, 1] (default 0.8 for img2img, 1 for
    /// inpainting): only the last int(steps * strength) steps run, at least one.
    #[arg(long, requires = "image")]
    pub strength: Option<f64>,
    /// Width in pixels, a multiple of 8 (default: the model's native size).
    #[arg(long, value_parser = parse_size)]
    pub width: Option<usize>,
    /// Height in pixels, a multiple of 8 (default: the model's native size).
    #[arg(long, value_parser = parse_size)]
    pub height: Option<usize>,
    /// Denoising steps (1 to 150, as the server allows by default).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Classifier-free guidance scale (default 7.5 for models that take guidance).
    /// Stable Diffusion runs unguided at <= 1; the LDM text-to-image model, as
    /// diffusers runs it, only at exactly 1.
    #[arg(long, visible_alias = "guidance-scale")]
    pub guidance: Option<f64>,
    /// Scheduler: ddim, pndm, euler, euler-a, dpmpp-2m, dpmpp-2m-karras
    /// (default: the one the model folder ships with).
    #[arg(long)]
    pub scheduler: Option<SchedulerKind>,
    /// Seed (default: a random one, printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Number of images, 1 to 8 (FILE-0.png, FILE-1.png, ... when more than one).
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    /// DDIM eta (0 = deterministic).
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// Output PNG file.
    #[arg(long)]
    pub output: PathBuf,
    /// Device to run on: `cpu`, or `cuda:N` in a CUDA build.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The precision the networks compute in: `f32`, `f16` or `bf16` (default: f16 on
    /// CUDA, f32 on the CPU).
    #[arg(long, value_parser = super::serve::precision)]
    pub dtype: Option<Precision>,
}

/// The limits of a local generation: the server's defaults, so that what works here
/// works there (sizes up to twice the model's native size, 150 steps, 8 images).
fn cli_limits() -> EngineConfig {
    EngineConfig::default()
}

/// Runs the command; returns the exit code.
pub fn run(args: GenerateArgs) -> i32 {
    let started = Instant::now();
    let (dir, name) = match super::serve::model_source(args.model.as_deref(), None) {
        Ok(source) => source,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let options = LoadOptions {
        precision: args.dtype,
        ..super::serve::load_options(
            &dir,
            name,
            args.model_config.as_deref(),
            args.prediction_type,
        )
    };
    let device = match super::serve::parse_device(&args.device) {
        Ok(device) => device,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    if dir.is_dir() && (args.model_config.is_some() || args.prediction_type.is_some()) {
        eprintln!("error: --model-config and --prediction-type apply to single-file models only");
        return EXIT_USAGE;
    }
    let model = match load_model_from(&dir, &options, &device) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: cannot load model {}: {e}", dir.display());
            return 1;
        }
    };
    let image = match &args.image {
        None => None,
        Some(path) => match std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| input_image::decode(&bytes).map_err(|e| e.to_string()))
        {
            Ok(image) => Some(Arc::new(image)),
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", path.display());
                return EXIT_USAGE;
            }
        },
    };
    let mask = match &args.mask {
        None => None,
        Some(path) => match std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| input_image::decode_mask(&bytes).map_err(|e| e.to_string()))
        {
            Ok(mask) => Some(Arc::new(mask)),
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", path.display());
                return EXIT_USAGE;
            }
        },
    };
    let info = model.info().clone();
    let request = GenerateRequest {
        model: None,
        prompt: args.prompt,
        negative_prompt: args.negative_prompt,
        width: args.width,
        height: args.height,
        steps: Some(args.steps),
        guidance_scale: args.guidance,
        scheduler: args.scheduler.map(|k| k.to_string()),
        seed: args.seed,
        n: Some(args.n),
        eta: Some(args.eta),
        image,
        mask,
        strength: args.strength,
    };
    let params = match validate(&request, 0, &info, &cli_limits(), |text| {
        model.count_tokens(text).ok()
    }) {
        Ok(valid) => valid.params,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    tracing::info!(
        load_ms = started.elapsed().as_millis() as u64,
        family = %info.family,
        "model loaded"
    );

    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} step {pos}/{len} [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let sampling = Instant::now();
    let result = generate(&*model, &params, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    let images = match result {
        Ok(images) => images,
        Err(latentd_models::Error::InvalidArgument(msg)) => {
            eprintln!("error: {msg}");
            return EXIT_USAGE;
        }
        Err(e) => {
            eprintln!("error: generation failed: {e}");
            return 1;
        }
    };
    let elapsed = sampling.elapsed();
    for (i, image) in images.iter().enumerate() {
        let path = output_path(&args.output, i, images.len());
        let meta = ImageMetadata::new(&info.name, &params, i);
        let written = encode_png(image, &meta)
            .map_err(|e| e.to_string())
            .and_then(|bytes| std::fs::write(&path, bytes).map_err(|e| e.to_string()));
        if let Err(e) = written {
            eprintln!("error: cannot write {}: {e}", path.display());
            return 1;
        }
        println!("{}", path.display());
    }
    eprintln!(
        "seed {} | {} image(s) {}x{} | {} steps with {} in {:.2}s",
        params.seed,
        images.len(),
        params.width,
        params.height,
        params.steps,
        params.scheduler,
        elapsed.as_secs_f64()
    );
    0
}

/// `out.png` for a single image; `out-0.png`, `out-1.png`, ... for several.
fn output_path(output: &Path, index: usize, count: usize) -> PathBuf {
    if count == 1 {
        return output.to_path_buf();
    }
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let ext = output
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".into());
    output.with_file_name(format!("{stem}-{index}.{ext}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_outputs_only_for_several_images() {
        assert_eq!(
            output_path(Path::new("a/out.png"), 0, 1),
            PathBuf::from("a/out.png")
        );
        assert_eq!(
            output_path(Path::new("a/out.png"), 1, 2),
            PathBuf::from("a/out-1.png")
        );
        assert_eq!(
            output_path(Path::new("out"), 0, 3),
            PathBuf::from("out-0.png")
        );
    }
}
