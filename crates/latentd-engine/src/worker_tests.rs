//! The worker's logic against small fake models (no weights): batching across jobs
//! and models, results equal to each job run alone, failures that stay with their job.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use latentd_models::pipeline::{
    generate, AutoencoderKind, ConditionInput, Conditioning, ConditioningKind, DiffusionModel,
    Family, GuidanceRule, InitialNoise, ModelBase, ModelInfo, RgbImage, SamplingRules,
};
use latentd_models::schedulers::{SchedulerConfig, SchedulerKind};
use latentd_models::{Error, Result};

use crate::png_meta::{encode_png, ImageMetadata};
use crate::{Engine, EngineConfig, Event, GenerateRequest, Job};

/// A text- or un-conditioned model whose "denoiser" is a cheap function of each row's
/// input, timestep and context, so a row's result cannot depend on its batch.
struct FakeModel {
    base: ModelBase,
    /// Rows of every denoiser call made.
    calls: Mutex<Vec<usize>>,
    /// Milliseconds a call takes per latent cell (0: instant), polling the interrupt
    /// check every millisecond as the real networks do between blocks.
    ms_per_cell: AtomicU64,
    /// When set, the next decode waits for a message on it (once).
    decode_gate: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    /// Decodes begun.
    decodes: AtomicU64,
}

impl FakeModel {
    fn new(name: &str, conditioning: ConditioningKind) -> Arc<Self> {
        let text = conditioning == ConditioningKind::Text;
        Arc::new(Self {
            base: ModelBase {
                info: ModelInfo {
                    name: name.into(),
                    family: if text {
                        Family::StableDiffusion1
                    } else {
                        Family::LdmUnconditional
                    },
                    conditioning,
                    autoencoder: AutoencoderKind::Kl,
                    native_width: 8,
                    native_height: 8,
                    vae_scale_factor: 4,
                    size_multiple: 8,
                    latent_channels: 2,
                    max_prompt_tokens: text.then_some(16),
                    rules: SamplingRules {
                        guidance: if text {
                            GuidanceRule::AboveOne
                        } else {
                            GuidanceRule::Never
                        },
                        initial_noise: InitialNoise::Scaled,
                        scale_model_input: true,
                    },
                    default_scheduler: SchedulerKind::Ddim,
                    prediction_type: "epsilon".into(),
                    image_edits: false,
                    mask_channels: false,
                },
                scheduler_config: SchedulerConfig::default(),
                device: Device::Cpu,
                dtype: DType::F32,
            },
            calls: Mutex::new(Vec::new()),
            ms_per_cell: AtomicU64::new(0),
            decode_gate: Mutex::new(None),
            decodes: AtomicU64::new(0),
        })
    }

    fn calls(&self) -> Vec<usize> {
        self.calls.lock().unwrap().clone()
    }
}

impl DiffusionModel for FakeModel {
    fn base(&self) -> &ModelBase {
        &self.base
    }
    fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(text.split_whitespace().count())
    }
    fn encode(&self, jobs: &[ConditionInput<'_>]) -> Result<Vec<Conditioning>> {
        // The "embedding" of a prompt: its length and a checksum of its bytes.
        let embed = |text: &str| {
            let sum: u32 = text.bytes().map(u32::from).sum();
            Tensor::new(
                &[[[text.len() as f32 / 10.0, (sum % 97) as f32 / 97.0]]],
                &Device::Cpu,
            )
        };
        jobs.iter()
            .map(|job| {
                if self.base.info.conditioning != ConditioningKind::Text {
                    return Ok(Conditioning::default());
                }
                if job.prompt.contains("boom") {
                    return Err(Error::InvalidArgument("the prompt exploded".into()));
                }
                Ok(Conditioning {
                    text: Some(embed(job.prompt)?),
                    negative_text: if job.guided {
                        Some(embed(job.negative_prompt)?)
                    } else {
                        None
                    },
                    ..Conditioning::default()
                })
            })
            .collect()
    }
    fn predict(
        &self,
        input: &Tensor,
        timesteps: &[f32],
        context: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.calls.lock().unwrap().push(timesteps.len());
        let (b, c, h, w) = input.dims4()?;
        let busy = Duration::from_millis(self.ms_per_cell.load(Ordering::Relaxed) * (h * w) as u64);
        let until = std::time::Instant::now() + busy;
        while std::time::Instant::now() < until {
            latentd_models::interrupt::poll()?;
            std::thread::sleep(Duration::from_millis(1));
        }
        let t = Tensor::new(timesteps, &Device::Cpu)?.reshape((b, 1, 1, 1))?;
        let mut out = (input * 0.3)?.broadcast_add(&(t / 1000.0)?)?;
        if let Some(ctx) = context {
            let per_row = ctx.sum_keepdim(2)?.sum_keepdim(1)?.reshape((b, 1, 1, 1))?;
            out = out.broadcast_add(&per_row)?;
        }
        Ok(out.reshape((b, c, h, w))?)
    }
    fn decode(&self, latents: &Tensor) -> Result<Vec<RgbImage>> {
        self.decodes.fetch_add(1, Ordering::SeqCst);
        let gate = self.decode_gate.lock().unwrap().take();
        if let Some(gate) = gate {
            let _ = gate.recv_timeout(Duration::from_secs(10));
        }
        let (n, _, h, w) = latents.dims4()?;
        let values = latents.tanh()?.flatten_all()?.to_vec1::<f32>()?;
        let per = values.len() / n;
        Ok((0..n)
            .map(|i| RgbImage {
                width: w,
                height: h,
                data: (0..h * w * 3)
                    .map(|p| ((values[i * per + p % per] + 1.0) * 127.5) as u8)
                    .collect(),
            })
            .collect())
    }
}

fn engine(models: Vec<Arc<FakeModel>>, max_batch_rows: usize) -> Engine {
    let models: Vec<Arc<dyn DiffusionModel>> = models
        .into_iter()
        .map(|m| m as Arc<dyn DiffusionModel>)
        .collect();
    let config = EngineConfig {
        max_batch_rows,
        max_batch_latent_pixels: usize::MAX,
        ..EngineConfig::default()
    };
    Engine::start(vec![models], config).unwrap()
}

/// Waits for a job's terminal event: `Ok(())` when done, the error code otherwise.
async fn wait(job: &Arc<Job>) -> std::result::Result<(), String> {
    let mut events = job.subscribe(0);
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some((_, event)) = events.next().await {
            match event {
                Event::Done { .. } => return Ok(()),
                Event::Error { code, .. } => return Err(code.to_string()),
                _ => {}
            }
        }
        Err("no terminal event".to_string())
    });
    waited.await.unwrap_or_else(|_| Err("timed out".into()))
}

/// The PNGs of `job` run alone, with a direct [`generate`] call.
fn solo_pngs(model: &FakeModel, job: &Job) -> Vec<Vec<u8>> {
    let request = job.request();
    let images = generate(model, &request.params, |_, _| {}).unwrap();
    images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            encode_png(
                image,
                &ImageMetadata::new(&request.model, &request.params, i),
            )
            .unwrap()
        })
        .collect()
}

fn request(model: Option<&str>, prompt: Option<&str>, seed: u64, steps: usize) -> GenerateRequest {
    GenerateRequest {
        model: model.map(str::to_string),
        prompt: prompt.map(str::to_string),
        seed: Some(seed),
        steps: Some(steps),
        ..GenerateRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_of_two_models_batch_per_model_and_equal_their_solo_runs() {
    let text = FakeModel::new("text", ConditioningKind::Text);
    let plain = FakeModel::new("plain", ConditioningKind::None);
    let engine = engine(vec![text.clone(), plain.clone()], 16);
    let mut jobs = Vec::new();
    for i in 0..4u64 {
        let steps = 3 + i as usize;
        jobs.push(
            engine
                .submit(&request(None, Some(&format!("prompt {i}")), i, steps))
                .unwrap(),
        );
        jobs.push(
            engine
                .submit(&request(Some("plain"), None, 10 + i, steps))
                .unwrap(),
        );
    }
    for job in &jobs {
        wait(job).await.unwrap();
    }
    let engine_text_calls = text.calls();
    let engine_plain_calls = plain.calls();
    for job in &jobs {
        let model = if job.request().model == "text" {
            &text
        } else {
            &plain
        };
        let want = solo_pngs(model, job);
        for (i, png) in want.iter().enumerate() {
            assert_eq!(
                job.image(i).unwrap().as_ref(),
                png.as_slice(),
                "{}",
                job.request().model
            );
        }
    }
    // Guided text jobs add 2 rows each, unconditional ones 1: a call of one model
    // never holds the other's rows, and batching happened.
    assert!(engine_text_calls
        .iter()
        .all(|&rows| rows % 2 == 0 && rows <= 8));
    assert!(engine_plain_calls.iter().all(|&rows| rows <= 4));
    assert!(
        engine_text_calls.iter().any(|&rows| rows > 2),
        "{engine_text_calls:?}"
    );
    assert!(
        engine_plain_calls.iter().any(|&rows| rows > 1),
        "{engine_plain_calls:?}"
    );
    assert_eq!(engine.models().len(), 2);
    engine.shutdown(Duration::from_secs(5));
}

/// A finished job is decoded off the denoising loop: while its decode is held up, a
/// second job runs every one of its steps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_being_decoded_never_stalls_the_steps_of_the_others() {
    let text = FakeModel::new("text", ConditioningKind::Text);
    let (release, gate) = std::sync::mpsc::channel();
    *text.decode_gate.lock().unwrap() = Some(gate);
    let engine = engine(vec![text.clone()], 16);
    let first = engine.submit(&request(None, Some("first"), 1, 1)).unwrap();
    let started = std::time::Instant::now();
    while text.decodes.load(Ordering::SeqCst) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no decode began"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = engine.submit(&request(None, Some("second"), 2, 6)).unwrap();
    let mut events = second.subscribe(0);
    // Well within the gate's 10 s, after which a held decode would go on anyway.
    let all_steps = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some((_, event)) = events.next().await {
            if let Event::Progress { step, total, .. } = event {
                if step == total {
                    return true;
                }
            }
        }
        false
    });
    assert!(
        all_steps.await.unwrap_or(false),
        "the second job's steps waited for the first job's decode"
    );
    assert!(
        !first.state().is_terminal(),
        "the first decode was not held"
    );
    release.send(()).unwrap();
    for job in [&first, &second] {
        wait(job).await.unwrap();
        assert_eq!(
            job.image(0).unwrap().as_ref(),
            solo_pngs(&text, job)[0].as_slice()
        );
    }
    engine.shutdown(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_fails_alone_and_the_worker_goes_on() {
    let text = FakeModel::new("text", ConditioningKind::Text);
    let engine = engine(vec![text.clone()], 16);
    let good = engine.submit(&request(None, Some("fine"), 1, 4)).unwrap();
    let bad = engine.submit(&request(None, Some("boom"), 2, 4)).unwrap();
    assert_eq!(wait(&bad).await, Err("internal".to_string()));
    wait(&good).await.unwrap();
    assert_eq!(
        good.image(0).unwrap().as_ref(),
        solo_pngs(&text, &good)[0].as_slice()
    );
    let later = engine.submit(&request(None, Some("later"), 3, 2)).unwrap();
    wait(&later).await.unwrap();
    engine.shutdown(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_models_and_refused_fields_never_reach_a_worker() {
    let plain = FakeModel::new("plain", ConditioningKind::None);
    let engine = engine(vec![plain.clone()], 8);
    let err = engine
        .submit(&request(Some("nope"), None, 0, 2))
        .unwrap_err();
    assert_eq!(err.code(), crate::Code::ModelNotFound);
    assert!(err.to_string().contains("plain"), "{err}");
    let err = engine
        .submit(&request(None, Some("a cat"), 0, 2))
        .unwrap_err();
    assert_eq!(err.code(), crate::Code::InvalidRequest);
    assert!(plain.calls().is_empty());
    engine.shutdown(Duration::from_secs(5));
}

#[test]
fn models_must_have_distinct_names() {
    let a = FakeModel::new("same", ConditioningKind::None);
    let models: Vec<Arc<dyn DiffusionModel>> = vec![a.clone(), a];
    assert!(Engine::start(vec![models], EngineConfig::default()).is_err());
    assert!(Engine::start(vec![], EngineConfig::default()).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_worker_fails_its_jobs_restarts_and_serves_on() {
    use crate::supervisor::fault;
    let text = FakeModel::new("text", ConditioningKind::Text);
    let engine = engine(vec![text.clone()], 16);
    let doomed = engine
        .submit(&request(None, Some(fault::WORKER), 1, 50))
        .unwrap();
    assert_eq!(wait(&doomed).await, Err("internal".to_string()));
    let health = engine.worker_health();
    assert_eq!(health.len(), 1);
    assert!(health[0].alive && !health[0].wedged, "{health:?}");
    assert_eq!(health[0].restarts, 1);
    let later = engine.submit(&request(None, Some("later"), 3, 2)).unwrap();
    wait(&later).await.unwrap();
    assert_eq!(
        later.image(0).unwrap().as_ref(),
        solo_pngs(&text, &later)[0].as_slice()
    );

    // The encoder thread survives a panic too: that job fails, the next succeeds.
    let doomed = engine
        .submit(&request(None, Some(fault::ENCODER), 1, 2))
        .unwrap();
    assert_eq!(wait(&doomed).await, Err("internal".to_string()));
    let after = engine.submit(&request(None, Some("after"), 4, 2)).unwrap();
    wait(&after).await.unwrap();
    engine.shutdown(Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_and_drop_end_every_accepted_job() {
    let plain = FakeModel::new("plain", ConditioningKind::None);
    let engine = engine(vec![plain.clone()], 1);
    let jobs: Vec<_> = (0..4)
        .map(|i| engine.submit(&request(None, None, i, 150)).unwrap())
        .collect();
    engine.shutdown(Duration::from_millis(0));
    // A job the worker finished before the shutdown reached it ends done; every other
    // one ends with the shutdown's error. Either way its subscribers see the end.
    for job in &jobs {
        assert!(job.state().is_terminal(), "{:?}", job.state());
        if let Err(code) = wait(job).await {
            assert_eq!(code, "shutting_down");
        }
    }

    let engine2 = self::engine(vec![plain], 1);
    let jobs: Vec<_> = (0..3)
        .map(|i| engine2.submit(&request(None, None, i, 150)).unwrap())
        .collect();
    drop(engine2);
    for job in &jobs {
        assert_eq!(wait(job).await, Err("shutting_down".to_string()));
    }
}

/// A model whose every call takes a while, to see the health check at work.
struct SlowModel(Arc<FakeModel>);

impl DiffusionModel for SlowModel {
    fn base(&self) -> &ModelBase {
        self.0.base()
    }
    fn count_tokens(&self, text: &str) -> Result<usize> {
        self.0.count_tokens(text)
    }
    fn encode(&self, jobs: &[ConditionInput<'_>]) -> Result<Vec<Conditioning>> {
        self.0.encode(jobs)
    }
    fn predict(&self, input: &Tensor, t: &[f32], context: Option<&Tensor>) -> Result<Tensor> {
        std::thread::sleep(Duration::from_millis(400));
        self.0.predict(input, t, context)
    }
    fn decode(&self, latents: &Tensor) -> Result<Vec<RgbImage>> {
        self.0.decode(latents)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_progress_while_holding_work_is_wedged() {
    let slow: Arc<dyn DiffusionModel> =
        Arc::new(SlowModel(FakeModel::new("slow", ConditioningKind::None)));
    let config = EngineConfig {
        wedged_after: Duration::from_millis(150),
        ..EngineConfig::default()
    };
    let engine = Engine::start(vec![vec![slow]], config).unwrap();
    assert!(!engine.worker_health()[0].wedged, "idle is not wedged");
    let job = engine.submit(&request(None, None, 1, 3)).unwrap();
    let mut seen = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        if engine.worker_health()[0].wedged {
            seen = true;
            break;
        }
    }
    assert!(seen, "a 400 ms call past a 150 ms limit reads as wedged");
    wait(&job).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !engine.worker_health()[0].wedged,
        "idle again after the job"
    );
    engine.shutdown(Duration::from_secs(5));
}

/// A cancelled job alone in its call stops mid-call: its long denoiser call is
/// interrupted instead of run to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_only_job_of_a_long_call_stops_it_mid_call() {
    let model = FakeModel::new("text", ConditioningKind::Text);
    // 4 latent cells x 3 s: each call would take 12 s.
    model.ms_per_cell.store(3000, Ordering::Relaxed);
    let engine = engine(vec![model.clone()], 8);
    let job = engine
        .submit(&request(None, Some("a long one"), 1, 3))
        .unwrap();
    for _ in 0..500 {
        if !model.calls().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(model.calls().len(), 1, "the first call should be running");
    let cancelled_at = std::time::Instant::now();
    job.cancel();
    assert_eq!(wait(&job).await, Err("cancelled".to_string()));
    let took = cancelled_at.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "cancel took {took:?}: the call was not interrupted"
    );
    assert_eq!(model.calls().len(), 1, "no further call after the cancel");
}

/// An engine on a text model whose calls take `ms_per_cell` per latent cell, taking
/// requests up to 64x64 pixels, with a budget of `latent_pixels`.
fn sized_engine(ms_per_cell: u64, latent_pixels: usize) -> (Arc<FakeModel>, Engine) {
    let model = FakeModel::new("text", ConditioningKind::Text);
    model.ms_per_cell.store(ms_per_cell, Ordering::Relaxed);
    let config = EngineConfig {
        max_width: Some(64),
        max_height: Some(64),
        max_batch_latent_pixels: latent_pixels,
        ..EngineConfig::default()
    };
    let models: Vec<Arc<dyn DiffusionModel>> = vec![model.clone()];
    (model, Engine::start(vec![models], config).unwrap())
}

/// A 64x64 request (16x16 latents, two guided rows).
fn big_request(seed: u64, steps: usize) -> GenerateRequest {
    GenerateRequest {
        width: Some(64),
        height: Some(64),
        ..request(None, Some("big"), seed, steps)
    }
}

/// Shape groups share the device by time: a small job submitted while a big one runs
/// finishes all its steps before the big one makes many more, even when the big job
/// fills the batch budget on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_job_is_not_held_behind_a_big_one_step_by_step() {
    // The budget: the big job's two guided rows of 16x16 latents, exactly.
    let (_model, engine) = sized_engine(2, 2 * 16 * 16);
    // 64x64 pixels: 256 latent cells, ~0.5 s a call; 8x8: 4 cells, ~8 ms.
    let big = engine.submit(&big_request(1, 30)).unwrap();
    let small = engine.submit(&request(None, Some("small"), 2, 10)).unwrap();
    assert_eq!(wait(&small).await, Ok(()));
    let big_steps = big.snapshot().step;
    assert!(
        big_steps <= 2,
        "the big job made {big_steps} steps while the small one ran 10"
    );
    big.cancel();
    let _ = wait(&big).await;
}

/// A small job that arrives while a big job's long call is in progress does not wait
/// for that call: the long call runs on the worker's lane and the small job's short
/// calls run beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_job_does_not_wait_for_a_long_call_in_progress() {
    let (model, engine) = sized_engine(10, crate::config::DEFAULT_MAX_BATCH_LATENT_PIXELS);
    // A first small job, so the model's calls are measured: 8x8 pixels are 4 latent
    // cells, 40 ms a call.
    let warm = engine.submit(&request(None, Some("warm"), 1, 2)).unwrap();
    assert_eq!(wait(&warm).await, Ok(()));
    // 64x64 pixels: 256 cells, 2.56 s a call.
    let calls_before = model.calls().len();
    let big = engine.submit(&big_request(2, 3)).unwrap();
    for _ in 0..400 {
        if model.calls().len() > calls_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        model.calls().len(),
        calls_before + 1,
        "the big call should be running"
    );
    let submitted = std::time::Instant::now();
    let small = engine.submit(&request(None, Some("small"), 3, 5)).unwrap();
    assert_eq!(wait(&small).await, Ok(()));
    let took = submitted.elapsed();
    assert_eq!(
        big.snapshot().step,
        0,
        "the small job's 5 calls of 40 ms took {took:?}: they waited for the big job's 2.56 s call"
    );
    big.cancel();
    assert_eq!(wait(&big).await, Err("cancelled".to_string()));
}
