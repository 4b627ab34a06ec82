//! A real server on 127.0.0.1:0 serving the tiny SD1 fixture, and small HTTP helpers.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use candle_core::Device;
use futures_util::StreamExt;
use latentd_engine::{Engine, EngineConfig};
use latentd_models::pipeline::{load_model, DiffusionModel};
use latentd_server::http::{AppState, RunningServer};
use serde_json::Value;

/// The tiny SD1-style fixture pipeline.
pub fn fixture_dir() -> PathBuf {
    fixture("sd1-tiny")
}

/// A fixture folder by name, e.g. `ldm-tiny`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Server options for a test.
pub struct Options {
    pub config: EngineConfig,
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
    pub grace: Duration,
    /// Fixture folders to serve as `(id, folder name)`; empty serves `sd1-tiny` alone.
    pub models: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            config: EngineConfig {
                max_steps: 1000,
                default_steps: 4,
                ..EngineConfig::default()
            },
            api_key: None,
            max_body_bytes: 16 * 1024 * 1024,
            grace: Duration::from_secs(30),
            models: Vec::new(),
        }
    }
}

/// A running test server.
pub struct TestServer {
    pub engine: Engine,
    pub server: RunningServer,
    pub base: String,
    pub client: reqwest::Client,
}

impl TestServer {
    pub async fn start(opts: Options) -> Self {
        let models: Vec<Arc<dyn DiffusionModel>> = if opts.models.is_empty() {
            vec![load_model(&fixture_dir(), None, &Device::Cpu).unwrap()]
        } else {
            opts.models
                .iter()
                .map(|(id, folder)| load_model(&fixture(folder), Some(id), &Device::Cpu).unwrap())
                .collect()
        };
        let engine = Engine::start(vec![models], opts.config).unwrap();
        let state = AppState::new(engine.clone(), opts.api_key, opts.max_body_bytes);
        let server = RunningServer::start(state, "127.0.0.1:0".parse().unwrap(), opts.grace)
            .await
            .unwrap();
        let base = format!("http://{}", server.addr);
        Self {
            engine,
            server,
            base,
            client: reqwest::Client::new(),
        }
    }

    pub async fn default() -> Self {
        Self::start(Options::default()).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// POST /v1/generate with Accept: image/png; returns the PNG bytes.
    pub async fn png(&self, body: Value) -> Vec<u8> {
        let r = self
            .client
            .post(self.url("/v1/generate"))
            .header("accept", "image/png")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
        r.bytes().await.unwrap().to_vec()
    }
}

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct Sse {
    pub id: Option<String>,
    pub event: String,
    pub data: Value,
}

/// Reads SSE events from a response until `stop` says so or the stream ends.
pub async fn read_sse(resp: reqwest::Response, mut stop: impl FnMut(&Sse) -> bool) -> Vec<Sse> {
    let mut out = Vec::new();
    let mut buf = String::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { break };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let mut ev = Sse {
                id: None,
                event: "message".into(),
                data: Value::Null,
            };
            let mut data = String::new();
            let mut any = false;
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    ev.id = Some(v.trim().to_string());
                    any = true;
                } else if let Some(v) = line.strip_prefix("event:") {
                    ev.event = v.trim().to_string();
                    any = true;
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                    any = true;
                }
            }
            if !any {
                continue; // keep-alive comment
            }
            ev.data = serde_json::from_str(&data).unwrap_or(Value::String(data));
            let done = stop(&ev);
            out.push(ev);
            if done {
                return out;
            }
        }
    }
    out
}

/// Decodes a PNG into (width, height, rgb bytes) and its latentd metadata JSON.
pub fn decode(png: &[u8]) -> (usize, usize, Vec<u8>, Value) {
    let d = latentd_engine::png_meta::decode_png(png).unwrap();
    let meta = d
        .texts
        .iter()
        .find(|(k, _)| k == "latentd")
        .map(|(_, v)| serde_json::from_str(v).unwrap())
        .unwrap_or(Value::Null);
    (d.image.width, d.image.height, d.image.data, meta)
}

/// Polls a job until its state is terminal; returns the last status.
pub async fn wait_job(s: &TestServer, id: &str) -> Value {
    for _ in 0..600 {
        let v: Value = s.get(&format!("/v1/jobs/{id}")).await.json().await.unwrap();
        let state = v["state"].as_str().unwrap_or("").to_string();
        if ["succeeded", "failed", "cancelled"].contains(&state.as_str()) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} did not finish");
}
