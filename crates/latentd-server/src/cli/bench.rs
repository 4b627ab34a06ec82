//! `latentd bench`: times a model's parts and a whole generation on one device, the
//! way `bench/sd15_diffusers.py` times diffusers on the same folder, so that
//! `bench/sd15-compare.sh` can put the two side by side.
//!
//! Each measurement is one warm-up call, then `--runs` timed calls (the median and the
//! minimum are reported); on an accelerator every call ends with a device
//! synchronisation. The whole generation is not warmed up separately: the parts timed
//! before it have run every network it uses.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use clap::Args;
use latentd_models::pipeline::{
    generate, load_model_from, ConditionInput, GenerationParams, LoadOptions, Precision,
    STATE_DTYPE,
};
use latentd_models::schedulers::SchedulerKind;
use latentd_models::TorchRng;
use serde::Serialize;

use super::EXIT_USAGE;

/// The guidance scale of every guided call (Stable Diffusion's usual 7.5).
const GUIDANCE: f64 = 7.5;

/// Arguments of `latentd bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A Stable Diffusion pipeline folder in diffusers' layout (default: the built-in
    /// model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Device to run on: `cpu`, or `cuda:N` in a CUDA build.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The precision the networks compute in (default: f16 on CUDA, f32 on the CPU).
    #[arg(long, value_parser = super::serve::precision)]
    pub dtype: Option<Precision>,
    /// Square image sizes in pixels for the guided UNet step; the largest is also the
    /// size of the VAE decode and of the whole generation.
    #[arg(long, value_delimiter = ',', default_value = "256,512")]
    pub sizes: Vec<usize>,
    /// UNet rows per call for the guided step (2 per image: unconditional and
    /// conditional), even numbers.
    #[arg(long, value_delimiter = ',', default_value = "2")]
    pub rows: Vec<usize>,
    /// Denoising steps of the whole generation (DDIM, guidance 7.5); 0 skips it.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Timed runs of each measurement, after one warm-up.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One measured part, as the JSON report holds it.
#[derive(Debug, Serialize)]
struct Measurement {
    /// `text_encoder`, `unet_step`, `vae_decode` or `generation`.
    part: &'static str,
    /// Image side in pixels (0 for the text encoder).
    size: usize,
    /// UNet rows per call (guided: 2 per image); 0 where it does not apply.
    rows: usize,
    /// Images the call produces or serves (the per-image time divides by it).
    images: usize,
    median_s: f64,
    min_s: f64,
    runs_s: Vec<f64>,
}

/// The whole report.
#[derive(Debug, Serialize)]
struct Report {
    implementation: &'static str,
    model: String,
    device: String,
    dtype: String,
    measurements: Vec<Measurement>,
    /// The process's peak resident memory (`VmHWM`), MiB.
    peak_rss_mib: Option<f64>,
    /// The most device memory in use seen after any call, MiB (accelerators only).
    peak_device_mib: Option<f64>,
}

/// Runs the command; returns the exit code.
pub fn run(args: BenchArgs) -> i32 {
    if args.runs == 0 || args.sizes.is_empty() || args.rows.is_empty() {
        eprintln!("error: --runs, --sizes and --rows must not be empty or zero");
        return EXIT_USAGE;
    }
    if let Some(bad) = args.rows.iter().find(|r| **r == 0 || *r % 2 == 1) {
        eprintln!("error: --rows {bad}: a guided step takes an even number of rows (2 per image)");
        return EXIT_USAGE;
    }
    if let Some(bad) = args.sizes.iter().find(|s| **s == 0 || *s % 8 != 0) {
        eprintln!("error: --sizes {bad}: sizes are positive multiples of 8");
        return EXIT_USAGE;
    }
    let device = match super::serve::parse_device(&args.device) {
        Ok(device) => device,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    match bench(&args, &device) {
        Ok(report) => {
            print_table(&report);
            if let Some(path) = &args.json {
                let written = serde_json::to_vec_pretty(&report)
                    .map_err(|e| e.to_string())
                    .and_then(|bytes| std::fs::write(path, bytes).map_err(|e| e.to_string()));
                if let Err(e) = written {
                    eprintln!("error: cannot write {}: {e}", path.display());
                    return 1;
                }
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn bench(args: &BenchArgs, device: &Device) -> anyhow::Result<Report> {
    let (dir, name) = super::serve::model_source(args.model.as_deref(), None)?;
    let options = LoadOptions {
        name,
        precision: args.dtype,
        ..LoadOptions::default()
    };
    let model = load_model_from(&dir, &options, device)
        .map_err(|e| anyhow::anyhow!("cannot load model {}: {e}", dir.display()))?;
    let info = model.info().clone();
    if !info.takes_prompt() || !info.is_guided(GUIDANCE) {
        anyhow::bail!("latentd bench times guided text-to-image models (Stable Diffusion)");
    }
    let mut memory = MemoryWatch::new(device.clone());
    let mut measurements = Vec::new();
    let largest = args.sizes.iter().copied().max().unwrap_or(512);

    // The text encoder on 2 prompts: one guided job's prompt and negative prompt.
    let job = ConditionInput {
        prompt: "a photograph of an astronaut riding a horse",
        negative_prompt: "",
        guided: true,
        image: None,
        mask: None,
        strength: None,
    };
    let label = part_label("text_encoder", 0, 0);
    let runs = time_runs(&label, args.runs, device, &mut memory, || {
        model.encode(&[job]).map(drop)
    })?;
    measurements.push(Measurement::new("text_encoder", 0, 0, 1, runs));
    let conditioning = model
        .encode(&[job])?
        .pop()
        .ok_or_else(|| anyhow::anyhow!("the text encoder returned nothing"))?;
    let (Some(text), Some(negative)) = (conditioning.text, conditioning.negative_text) else {
        anyhow::bail!("the model returned no text embedding for a guided job");
    };

    let mut rng = TorchRng::new(0);
    for &size in &args.sizes {
        let (h, w) = info.latent_size(size, size);
        for &rows in &args.rows {
            let images = rows / 2;
            let input = rng
                .randn_tensor(&[rows, info.latent_channels, h, w], device)?
                .to_dtype(STATE_DTYPE)?;
            let mut context = vec![negative.clone(); images];
            context.extend(std::iter::repeat_n(text.clone(), images));
            let context = Tensor::cat(&context, 0)?;
            let timesteps = vec![500f32; rows];
            let label = part_label("unet_step", size, rows);
            let runs = time_runs(&label, args.runs, device, &mut memory, || {
                model.predict(&input, &timesteps, Some(&context)).map(drop)
            })?;
            measurements.push(Measurement::new("unet_step", size, rows, images, runs));
        }
    }

    let (h, w) = info.latent_size(largest, largest);
    let latents = rng.randn_tensor(&[1, info.latent_channels, h, w], device)?;
    let label = part_label("vae_decode", largest, 0);
    let runs = time_runs(&label, args.runs, device, &mut memory, || {
        model.decode(&latents).map(drop)
    })?;
    measurements.push(Measurement::new("vae_decode", largest, 0, 1, runs));

    if args.steps > 0 {
        let mut params = GenerationParams {
            prompt: job.prompt.to_string(),
            negative_prompt: None,
            width: largest,
            height: largest,
            steps: args.steps,
            guidance_scale: GUIDANCE,
            scheduler: SchedulerKind::Ddim,
            seed: 0,
            n: 1,
            eta: 0.0,
            image: None,
            mask: None,
            strength: None,
            step_noise_seed: None,
        };
        let label = part_label("generation", largest, 2);
        let mut runs = Vec::with_capacity(args.runs);
        for run in 0..args.runs {
            params.seed = run as u64;
            eprintln!(
                "{label}, {} steps: run {}/{}",
                args.steps,
                run + 1,
                args.runs
            );
            let started = Instant::now();
            generate(&*model, &params, |_, _| {})?;
            device.synchronize()?;
            runs.push(started.elapsed());
            memory.sample();
        }
        measurements.push(Measurement::new("generation", largest, 2, 1, runs));
    }

    Ok(Report {
        implementation: "latentd",
        model: info.name.clone(),
        device: latentd_models::device::label(device),
        dtype: format!("{:?}", model.dtype()).to_lowercase(),
        measurements,
        peak_rss_mib: peak_rss_mib(),
        peak_device_mib: memory.peak_mib(),
    })
}

/// One warm-up call of `call`, then `runs` timed ones.
fn time_runs(
    label: &str,
    runs: usize,
    device: &Device,
    memory: &mut MemoryWatch,
    mut call: impl FnMut() -> latentd_models::Result<()>,
) -> anyhow::Result<Vec<Duration>> {
    eprintln!("{label}: warm-up, then {runs} runs");
    call()?;
    device.synchronize()?;
    memory.sample();
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        call()?;
        device.synchronize()?;
        times.push(started.elapsed());
        memory.sample();
    }
    Ok(times)
}

impl Measurement {
    fn new(
        part: &'static str,
        size: usize,
        rows: usize,
        images: usize,
        runs: Vec<Duration>,
    ) -> Self {
        let mut secs: Vec<f64> = runs.iter().map(Duration::as_secs_f64).collect();
        let runs_s = secs.clone();
        secs.sort_by(f64::total_cmp);
        let n = secs.len();
        let median_s = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => secs[n / 2],
            _ => (secs[n / 2 - 1] + secs[n / 2]) / 2.0,
        };
        Self {
            part,
            size,
            rows,
            images,
            median_s,
            min_s: secs.first().copied().unwrap_or(f64::NAN),
            runs_s,
        }
    }

    fn label(&self) -> String {
        part_label(self.part, self.size, self.rows)
    }
}

/// How the progress lines and the table name a measured part.
fn part_label(part: &str, side: usize, rows: usize) -> String {
    match part {
        "text_encoder" => "text encoder, 2 prompts".to_string(),
        "unet_step" => format!("guided UNet step {side}x{side}, {rows} rows"),
        "vae_decode" => format!("VAE decode {side}x{side}"),
        _ => format!("whole generation {side}x{side}"),
    }
}

/// The most device memory in use seen so far.
struct MemoryWatch {
    device: Device,
    peak: Option<u64>,
}

impl MemoryWatch {
    fn new(device: Device) -> Self {
        Self { device, peak: None }
    }

    fn sample(&mut self) {
        if let Some(memory) = latentd_models::device::memory(&self.device) {
            self.peak = Some(self.peak.unwrap_or(0).max(memory.used));
        }
    }

    fn peak_mib(&self) -> Option<f64> {
        self.peak.map(|bytes| bytes as f64 / (1024.0 * 1024.0))
    }
}

/// `VmHWM` of this process in MiB (Linux).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn print_table(report: &Report) {
    println!(
        "latentd bench: {} on {}, {}; median (min) of the timed runs",
        report.model, report.device, report.dtype
    );
    println!("| part | median | min | per image |");
    println!("|---|---|---|---|");
    for m in &report.measurements {
        println!(
            "| {} | {:.3} s | {:.3} s | {:.3} s |",
            m.label(),
            m.median_s,
            m.min_s,
            m.median_s / m.images.max(1) as f64
        );
    }
    if let Some(rss) = report.peak_rss_mib {
        println!("peak RSS {rss:.0} MiB");
    }
    if let Some(device) = report.peak_device_mib {
        println!("peak device memory in use {device:.0} MiB");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_minimums_of_runs() {
        let ms = |v: &[u64]| v.iter().map(|m| Duration::from_millis(*m)).collect();
        let odd = Measurement::new("unet_step", 64, 2, 1, ms(&[30, 10, 20]));
        assert_eq!((odd.median_s, odd.min_s), (0.02, 0.01));
        assert_eq!(odd.runs_s, [0.03, 0.01, 0.02]);
        let even = Measurement::new("vae_decode", 64, 0, 1, ms(&[40, 10, 20, 30]));
        assert!((even.median_s - 0.025).abs() < 1e-12);
        assert_eq!(even.label(), "VAE decode 64x64");
    }
}
