//! `latentd serve`: load the model, start the engine and the HTTP server.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use candle_core::Device;
use clap::Args;
use latentd_engine::{Engine, EngineConfig};
use latentd_models::checkpoint::parse_prediction_type;
use latentd_models::pipeline::{load_model_from, DiffusionModel, LoadOptions, Precision};
use latentd_models::schedulers::PredictionType;

use crate::http::{AppState, RunningServer};
use crate::shared_jobs::{JobStoreSpec, SharedConfig, SharedJobs};

/// Arguments of `latentd serve`; every flag can also be set from the environment.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// A model to serve: a diffusers-layout pipeline folder, or a single-file Stable
    /// Diffusion 1.x/2.x checkpoint (.safetensors, .ckpt, .pt, .pth in the original
    /// CompVis layout), as `PATH` (named after the folder, or the file without its
    /// extension) or `NAME=PATH`; repeat it (or separate with commas) to serve several
    /// models, the first being the default. Without it the built-in model is served.
    #[arg(
        long = "model",
        env = "LATENTD_MODEL",
        value_delimiter = ',',
        value_name = "[NAME=]PATH"
    )]
    pub models: Vec<ModelSpec>,
    /// Model id of the built-in model or of a single unnamed `--model`
    /// (default: the folder's name, or the file's without its extension).
    #[arg(long, env = "LATENTD_MODEL_NAME")]
    pub model_name: Option<String>,
    /// For single-file models: a diffusers pipeline folder whose configs, tokenizer and
    /// scheduler replace the ones inferred from the file, which then supplies the
    /// weights only (as diffusers' `from_single_file(path, config=DIR)`).
    #[arg(long, env = "LATENTD_MODEL_CONFIG", value_name = "DIR")]
    pub model_config: Option<PathBuf>,
    /// For single-file models: the scheduler's prediction type (`epsilon`,
    /// `v_prediction`, `sample`) instead of the config's. A file alone is sampled as
    /// SD 1.5 (epsilon) or SD 2.1 (v_prediction) is: give `epsilon` for SD 2.x base
    /// (512 px) checkpoints.
    #[arg(long, env = "LATENTD_PREDICTION_TYPE", value_parser = prediction_type)]
    pub prediction_type: Option<PredictionType>,
    /// Address to listen on.
    #[arg(long, env = "LATENTD_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on; 0 picks a free port (logged).
    #[arg(long, env = "LATENTD_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Devices to run on, one worker each: `cpu`, or `cuda:0,cuda:1` in a CUDA build.
    #[arg(
        long,
        env = "LATENTD_DEVICES",
        default_value = "cpu",
        value_delimiter = ','
    )]
    pub devices: Vec<String>,
    /// The precision the networks compute in: `f32`, `f16` or `bf16` (default: f16 on
    /// CUDA, f32 on the CPU). The sampler's state stays f32, and an autoencoder whose
    /// config sets `force_upcast` stays f32 too.
    #[arg(long, env = "LATENTD_DTYPE", value_parser = precision)]
    pub dtype: Option<Precision>,
    /// Jobs waiting before new ones are refused with 429.
    #[arg(long, env = "LATENTD_MAX_QUEUE", default_value_t = 64)]
    pub max_queue: usize,
    /// UNet rows in one call: in flight per worker and image size (a guided image
    /// takes 2 rows).
    #[arg(long, env = "LATENTD_MAX_BATCH_ROWS", default_value_t = latentd_engine::config::DEFAULT_MAX_BATCH_ROWS)]
    pub max_batch_rows: usize,
    /// Rows x latent pixels in one call, per worker and image size (default: 8 rows of
    /// 64x64 latents, Stable Diffusion at 512x512), so that small images batch more rows
    /// than large ones.
    #[arg(long, env = "LATENTD_MAX_BATCH_LATENT_PIXELS", default_value_t = latentd_engine::config::DEFAULT_MAX_BATCH_LATENT_PIXELS)]
    pub max_batch_latent_pixels: usize,
    /// Require this key (`Authorization: Bearer KEY` or `x-api-key`) on /v1/*.
    #[arg(long, env = "LATENTD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Largest request body in bytes.
    #[arg(long, env = "LATENTD_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Largest width in pixels, for every model (default: twice each model's native width).
    #[arg(long, env = "LATENTD_MAX_WIDTH")]
    pub max_width: Option<usize>,
    /// Largest height in pixels, for every model (default: twice each model's native
    /// height).
    #[arg(long, env = "LATENTD_MAX_HEIGHT")]
    pub max_height: Option<usize>,
    /// Most denoising steps per request.
    #[arg(long, env = "LATENTD_MAX_STEPS", default_value_t = 150)]
    pub max_steps: usize,
    /// Most images per request.
    #[arg(long, env = "LATENTD_MAX_N", default_value_t = 8)]
    pub max_n: usize,
    /// Largest guidance scale.
    #[arg(long, env = "LATENTD_MAX_GUIDANCE", default_value_t = 50.0)]
    pub max_guidance: f64,
    /// Default steps when a request gives none.
    #[arg(long, env = "LATENTD_DEFAULT_STEPS", default_value_t = 20)]
    pub default_steps: usize,
    /// Seconds finished async jobs stay retrievable.
    #[arg(long, env = "LATENTD_JOB_TTL_SECS", default_value_t = 600)]
    pub job_ttl_secs: u64,
    /// Finished jobs kept at most.
    #[arg(long, env = "LATENTD_MAX_FINISHED_JOBS", default_value_t = 1000)]
    pub max_finished_jobs: usize,
    /// Bytes of PNGs finished jobs keep, in all (oldest dropped first).
    #[arg(long, env = "LATENTD_MAX_FINISHED_BYTES", default_value_t = 1 << 30)]
    pub max_finished_bytes: usize,
    /// Seconds without a finished tick, while holding work, after which /health
    /// reports a worker as wedged (503) so an orchestrator restarts the process.
    #[arg(long, env = "LATENTD_WEDGED_AFTER_SECS", default_value_t = 600)]
    pub wedged_after_secs: u64,
    /// Seconds running jobs get to finish on SIGTERM/SIGINT.
    #[arg(long, env = "LATENTD_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
    /// Where async jobs live: `memory` (this process) or `redis://HOST:PORT[/DB]`,
    /// shared by every replica on that Redis (they survive a replica's crash).
    #[arg(
        long,
        env = "LATENTD_JOB_STORE",
        default_value = "memory",
        value_name = "memory|redis://HOST:PORT[/DB]"
    )]
    pub job_store: JobStoreSpec,
    /// This replica's name in a shared job store (default: host name and a random suffix).
    #[arg(long, env = "LATENTD_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// A replica whose lease in the shared store is older than this is taken for dead
    /// and its jobs are run again elsewhere.
    #[arg(long, env = "LATENTD_JOB_LEASE_SECS", default_value_t = 10.0)]
    pub job_lease_secs: f64,
}

impl ServeArgs {
    /// The engine limits these flags describe.
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            max_queue: self.max_queue,
            max_batch_rows: self.max_batch_rows,
            max_batch_latent_pixels: self.max_batch_latent_pixels,
            max_width: self.max_width,
            max_height: self.max_height,
            max_steps: self.max_steps,
            max_n: self.max_n,
            max_guidance: self.max_guidance,
            default_steps: self.default_steps,
            finished_ttl: Duration::from_secs(self.job_ttl_secs),
            finished_max: self.max_finished_jobs,
            finished_max_bytes: self.max_finished_bytes,
            wedged_after: Duration::from_secs(self.wedged_after_secs),
            ..EngineConfig::default()
        }
    }
}

/// The shared store's settings from the command line.
pub fn shared_config(args: &ServeArgs) -> anyhow::Result<SharedConfig> {
    if !(args.job_lease_secs.is_finite() && args.job_lease_secs >= 0.3) {
        anyhow::bail!("--job-lease-secs must be at least 0.3");
    }
    let replica = match &args.replica_id {
        Some(name) if !name.trim().is_empty() => name.trim().to_string(),
        _ => {
            let host = std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.is_empty())
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|| "latentd".into());
            let suffix = latentd_engine::seed::random_job_id();
            format!("{host}-{}", &suffix[suffix.len() - 8..])
        }
    };
    Ok(SharedConfig {
        replica,
        lease: Duration::from_secs_f64(args.job_lease_secs),
        finished_ttl: Duration::from_secs(args.job_ttl_secs),
        max_queue: args.max_queue,
    })
}

/// Parses `cpu` or `cuda:N`.
pub fn parse_device(spec: &str) -> anyhow::Result<Device> {
    let spec = spec.trim();
    if spec == "cpu" {
        return Ok(Device::Cpu);
    }
    if let Some(index) =
        spec.strip_prefix("cuda:")
            .or(if spec == "cuda" { Some("0") } else { None })
    {
        let index: usize = index
            .parse()
            .map_err(|_| anyhow::anyhow!("bad device `{spec}`: expected cuda:N"))?;
        return Device::new_cuda(index)
            .map_err(|e| anyhow::anyhow!("cannot open {spec}: {e} (is this a CUDA build?)"));
    }
    anyhow::bail!("unknown device `{spec}`: expected cpu or cuda:N")
}

/// Parses `--dtype`.
pub fn precision(name: &str) -> Result<Precision, String> {
    name.parse::<Precision>().map_err(|e| e.to_string())
}

/// Parses `--prediction-type`.
pub fn prediction_type(name: &str) -> Result<PredictionType, String> {
    parse_prediction_type(name).map_err(|e| e.to_string())
}

/// One `--model` argument: a folder or single file and the id to serve it under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// The id, when given as `NAME=PATH`.
    pub name: Option<String>,
    /// The pipeline folder or checkpoint file.
    pub path: PathBuf,
}

impl std::str::FromStr for ModelSpec {
    type Err = String;

    /// `NAME=PATH`, where NAME has no path separator, or a bare `PATH`.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("a model path must not be empty".into());
        }
        match s.split_once('=') {
            Some((name, path)) if !name.contains(['/', '\\']) => {
                if name.is_empty() || path.is_empty() {
                    return Err(format!("`{s}`: expected NAME=PATH"));
                }
                Ok(Self {
                    name: Some(name.to_string()),
                    path: PathBuf::from(path),
                })
            }
            _ => Ok(Self {
                name: None,
                path: PathBuf::from(s),
            }),
        }
    }
}

/// The folders and files to load and their ids: the `--model` arguments, or the built-in
/// model. `name` (`--model-name`) names the built-in model or a single unnamed one.
pub fn model_sources(
    specs: &[ModelSpec],
    name: Option<&str>,
) -> anyhow::Result<Vec<(PathBuf, Option<String>)>> {
    if specs.is_empty() {
        return Ok(vec![model_source(None, name)?]);
    }
    if name.is_some() && (specs.len() > 1 || specs[0].name.is_some()) {
        anyhow::bail!("--model-name names a single unnamed --model; use NAME=PATH for several");
    }
    Ok(specs
        .iter()
        .map(|spec| {
            let id = spec.name.clone().or_else(|| name.map(str::to_string));
            (spec.path.clone(), id)
        })
        .collect())
}

/// The folder or file to load and the id to serve it under: `--model`, or the built-in
/// model.
pub fn model_source(
    model: Option<&std::path::Path>,
    name: Option<&str>,
) -> anyhow::Result<(PathBuf, Option<String>)> {
    match model {
        Some(dir) => Ok((dir.to_path_buf(), name.map(str::to_string))),
        None => {
            let dir = crate::builtin::unpack()
                .map_err(|e| anyhow::anyhow!("cannot unpack the built-in model: {e}"))?;
            let name = name.unwrap_or(crate::builtin::MODEL_NAME).to_string();
            Ok((dir, Some(name)))
        }
    }
}

/// How to load the model at `path`: `--model-config` and `--prediction-type` go to
/// single files only (a folder brings its own configs).
pub fn load_options(
    path: &std::path::Path,
    name: Option<String>,
    model_config: Option<&std::path::Path>,
    prediction_type: Option<PredictionType>,
) -> LoadOptions {
    let single_file = !path.is_dir();
    LoadOptions {
        name,
        model_config: model_config.filter(|_| single_file).map(PathBuf::from),
        prediction_type: prediction_type.filter(|_| single_file),
        precision: None,
    }
}

/// Loads every model once per device and starts the engine.
pub fn start_engine(args: &ServeArgs) -> anyhow::Result<Engine> {
    let sources = model_sources(&args.models, args.model_name.as_deref())?;
    let single_file_flags = args.model_config.is_some() || args.prediction_type.is_some();
    if single_file_flags && sources.iter().all(|(path, _)| path.is_dir()) {
        anyhow::bail!("--model-config and --prediction-type apply to single-file models only");
    }
    let mut workers = Vec::new();
    for spec in &args.devices {
        let device = parse_device(spec)?;
        let mut models: Vec<Arc<dyn DiffusionModel>> = Vec::new();
        for (path, name) in &sources {
            let started = std::time::Instant::now();
            let options = LoadOptions {
                precision: args.dtype,
                ..load_options(
                    path,
                    name.clone(),
                    args.model_config.as_deref(),
                    args.prediction_type,
                )
            };
            let model = load_model_from(path, &options, &device)
                .map_err(|e| anyhow::anyhow!("cannot load model {}: {e}", path.display()))?;
            let info = model.info();
            tracing::info!(
                device = %spec,
                load_ms = started.elapsed().as_millis() as u64,
                model = %info.name,
                family = %info.family,
                "model loaded"
            );
            models.push(model);
        }
        workers.push(models);
    }
    Engine::start(workers, args.engine_config()).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Runs the server until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let engine = {
        let args = args.clone();
        tokio::task::spawn_blocking(move || start_engine(&args)).await??
    };
    let mut state = AppState::new(engine.clone(), args.api_key.clone(), args.max_body_bytes);
    if let JobStoreSpec::Redis(url) = &args.job_store {
        state = state.with_shared_jobs(SharedJobs::start(url, engine, shared_config(&args)?)?);
    }
    let addr = SocketAddr::new(args.host, args.port);
    let grace = Duration::from_secs(args.shutdown_grace_secs);
    let mut server = RunningServer::start(state, addr, grace).await?;
    tracing::info!(addr = %server.addr, "listening");
    println!("latentd listening on http://{}", server.addr);
    shutdown_signal().await;
    server.begin_shutdown();
    server.wait().await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_specs_parse_names_and_bare_folders() {
        let named: ModelSpec = "faces=/models/ldm-celebahq".parse().unwrap();
        assert_eq!(named.name.as_deref(), Some("faces"));
        assert_eq!(named.path, PathBuf::from("/models/ldm-celebahq"));
        let bare: ModelSpec = "models/sd15".parse().unwrap();
        assert_eq!((bare.name, bare.path), (None, PathBuf::from("models/sd15")));
        let file: ModelSpec = "sd15=v1-5-pruned-emaonly.safetensors".parse().unwrap();
        assert_eq!(file.path, PathBuf::from("v1-5-pruned-emaonly.safetensors"));
        let path_with_eq: ModelSpec = "./a=b/c".parse().unwrap();
        assert_eq!(path_with_eq.name, None);
        assert!("=dir".parse::<ModelSpec>().is_err());
        assert!("name=".parse::<ModelSpec>().is_err());
        assert!("".parse::<ModelSpec>().is_err());
    }

    #[test]
    fn single_file_flags_go_to_files_only() {
        let config = Some(std::path::Path::new("sd15-configs"));
        let epsilon = Some(PredictionType::Epsilon);
        let dir = tempfile::Builder::new()
            .prefix("latentd-serve-test-")
            .tempdir()
            .unwrap();
        let folder = load_options(dir.path(), None, config, epsilon);
        assert_eq!((folder.model_config, folder.prediction_type), (None, None));
        let file = std::path::Path::new("model.safetensors");
        let single = load_options(file, Some("m".into()), config, epsilon);
        assert_eq!(single.name.as_deref(), Some("m"));
        assert_eq!(single.model_config, Some(PathBuf::from("sd15-configs")));
        assert_eq!(single.prediction_type, epsilon);
        assert_eq!(
            prediction_type("v_prediction"),
            Ok(PredictionType::VPrediction)
        );
        assert!(prediction_type("flow").is_err());
    }

    #[test]
    fn model_name_applies_to_one_unnamed_folder_only() {
        let one = vec!["dir".parse().unwrap()];
        let sources = model_sources(&one, Some("x")).unwrap();
        assert_eq!(sources, vec![(PathBuf::from("dir"), Some("x".to_string()))]);
        let two: Vec<ModelSpec> = vec!["a".parse().unwrap(), "b=c".parse().unwrap()];
        assert!(model_sources(&two, Some("x")).is_err());
        let sources = model_sources(&two, None).unwrap();
        assert_eq!(sources[1], (PathBuf::from("c"), Some("b".to_string())));
    }
}
