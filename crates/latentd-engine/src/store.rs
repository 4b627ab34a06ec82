//! Jobs by id, with finished jobs kept for a while for late readers.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::job::Job;

/// The job registry. Unfinished jobs are always kept; finished ones are dropped
/// after `ttl`, or oldest first when more than `max_finished` are kept or their PNGs
/// take more than `max_finished_bytes`.
pub struct JobStore {
    inner: Mutex<StoreInner>,
    ttl: Duration,
    max_finished: usize,
    max_finished_bytes: usize,
}

struct StoreInner {
    jobs: HashMap<String, Arc<Job>>,
    /// Ids in insertion order, to find the oldest candidates for eviction.
    order: VecDeque<String>,
}

impl JobStore {
    /// An empty store.
    pub fn new(ttl: Duration, max_finished: usize, max_finished_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(StoreInner {
                jobs: HashMap::new(),
                order: VecDeque::new(),
            }),
            ttl,
            max_finished,
            max_finished_bytes,
        }
    }

    /// Removes a job; it is not found afterwards.
    pub fn remove(&self, id: &str) -> Option<Arc<Job>> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let job = inner.jobs.remove(id)?;
        inner.order.retain(|other| other != id);
        Some(job)
    }

    /// Every job not yet finished.
    pub fn unfinished(&self) -> Vec<Arc<Job>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .jobs
            .values()
            .filter(|job| !job.state().is_terminal())
            .cloned()
            .collect()
    }

    /// Adds a job.
    pub fn insert(&self, job: Arc<Job>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.order.push_back(job.id().to_string());
        inner.jobs.insert(job.id().to_string(), job);
        self.evict(&mut inner, Instant::now());
    }

    /// Looks a job up by id.
    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.evict(&mut inner, Instant::now());
        inner.jobs.get(id).cloned()
    }

    /// Drops the finished jobs past the TTL or over the caps now, without waiting for a
    /// lookup; the number dropped.
    pub fn evict_expired(&self) -> usize {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.evict(&mut inner, Instant::now())
    }

    /// Number of jobs held.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .jobs
            .len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops what is over the TTL or the caps; the number dropped.
    fn evict(&self, inner: &mut StoreInner, now: Instant) -> usize {
        // Finished jobs, oldest first, with the bytes of their PNGs.
        let finished: Vec<(String, Instant, usize)> = inner
            .order
            .iter()
            .filter_map(|id| {
                let job = inner.jobs.get(id)?;
                job.finished_at()
                    .map(|t| (id.clone(), t, job.image_bytes()))
            })
            .collect();
        let mut count = finished.len();
        let mut bytes: usize = finished.iter().map(|(_, _, b)| b).sum();
        let mut drop: HashSet<String> = HashSet::new();
        for (id, at, size) in finished {
            let over = count > self.max_finished || bytes > self.max_finished_bytes;
            if over || now.duration_since(at) > self.ttl {
                drop.insert(id);
                count -= 1;
                bytes -= size;
            }
        }
        if drop.is_empty() {
            return 0;
        }
        for id in &drop {
            inner.jobs.remove(id);
        }
        inner.order.retain(|id| !drop.contains(id));
        drop.len()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::job::Event;
    use crate::request::ValidRequest;
    use latentd_models::pipeline::GenerationParams;
    use latentd_models::schedulers::SchedulerKind;

    /// An unfinished job with a minimal request (other modules' tests use it too).
    pub(crate) fn job(id: &str) -> Arc<Job> {
        Job::new(
            id.into(),
            ValidRequest {
                model: "m".into(),
                params: GenerationParams {
                    prompt: "p".into(),
                    negative_prompt: None,
                    width: 8,
                    height: 8,
                    steps: 1,
                    guidance_scale: 1.0,
                    scheduler: SchedulerKind::Ddim,
                    seed: 0,
                    n: 1,
                    eta: 0.0,
                    image: None,
                    mask: None,
                    strength: None,
                    step_noise_seed: None,
                },
                model_index: 0,
                rows: 4,
                latent_size: (8, 8),
            },
        )
    }

    /// Ends `j` as done.
    pub(crate) fn finish(j: &Job) {
        j.push(Event::Done {
            queue_ms: 0,
            inference_ms: 0,
            seed: 0,
        });
    }

    #[test]
    fn keeps_running_jobs_and_evicts_oldest_finished_beyond_the_cap() {
        let store = JobStore::new(Duration::from_secs(60), 2, usize::MAX);
        let jobs: Vec<_> = (0..4).map(|i| job(&format!("j{i}"))).collect();
        for j in &jobs {
            store.insert(j.clone());
        }
        finish(&jobs[0]);
        finish(&jobs[1]);
        finish(&jobs[2]);
        assert!(store.get("j0").is_none(), "oldest finished job is evicted");
        assert!(store.get("j1").is_some() && store.get("j2").is_some());
        assert!(store.get("j3").is_some(), "unfinished jobs are kept");
        assert_eq!(store.len(), 3);
    }

    #[test]
    fn evict_expired_drops_old_finished_jobs_without_a_lookup() {
        let store = JobStore::new(Duration::from_millis(0), 10, usize::MAX);
        let (done, running) = (job("d"), job("r"));
        store.insert(done.clone());
        store.insert(running.clone());
        finish(&done);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(store.evict_expired(), 1);
        assert_eq!(store.len(), 1, "the unfinished job stays");
        assert_eq!(store.evict_expired(), 0);
    }

    #[test]
    fn finished_jobs_expire_after_the_ttl() {
        let store = JobStore::new(Duration::from_millis(0), 10, usize::MAX);
        let j = job("a");
        store.insert(j.clone());
        assert!(store.get("a").is_some());
        finish(&j);
        std::thread::sleep(Duration::from_millis(2));
        assert!(store.get("a").is_none());
    }

    fn finish_with_png(j: &Job, bytes: usize) {
        j.push(Event::Image {
            index: 0,
            seed: 0,
            png: bytes::Bytes::from(vec![0u8; bytes]),
        });
        finish(j);
    }

    #[test]
    fn finished_jobs_are_capped_by_bytes_and_removal_forgets_a_job() {
        let store = JobStore::new(Duration::from_secs(60), 100, 2500);
        let jobs: Vec<_> = (0..3).map(|i| job(&format!("b{i}"))).collect();
        for j in &jobs {
            store.insert(j.clone());
            finish_with_png(j, 1000);
        }
        // 3000 bytes finished against a cap of 2500: the oldest goes.
        assert!(store.get("b0").is_none());
        assert!(store.get("b1").is_some() && store.get("b2").is_some());
        assert!(store.remove("b1").is_some());
        assert!(store.get("b1").is_none() && store.remove("b1").is_none());
        let running = job("r");
        store.insert(running.clone());
        assert_eq!(store.unfinished().len(), 1);
    }
}
