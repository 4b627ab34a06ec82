//! The request-duration metric of streamed responses covers the stream, not just the
//! time to the headers.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{read_sse, TestServer};

/// The `latentd_http_request_duration_seconds` buckets of `route`: (le, cumulative count).
async fn duration_buckets(s: &TestServer, route: &str) -> Vec<(f64, u64)> {
    let text = s.get("/metrics").await.text().await.unwrap();
    let route_label = format!("route=\"{route}\"");
    let mut buckets: Vec<(f64, u64)> = text
        .lines()
        .filter(|l| l.starts_with("latentd_http_request_duration_seconds_bucket{"))
        .filter(|l| l.contains(&route_label))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// Observations of `route` above `le` (which must be a bucket bound).
fn above(buckets: &[(f64, u64)], le: f64) -> u64 {
    let total = buckets.last().map(|b| b.1).unwrap_or(0);
    let at_most = buckets.iter().find(|b| b.0 == le).map(|b| b.1).unwrap_or(0);
    total - at_most
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_request_durations_cover_the_stream() {
    let s = TestServer::default().await;
    // Bucket bounds of the `_seconds` histograms (metrics.rs).
    let bounds = [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    let mut steps = 50;
    for _ in 0..4 {
        let before = duration_buckets(&s, "/v1/generate").await;
        let started = Instant::now();
        let resp = s
            .client
            .post(s.url("/v1/generate"))
            .header("accept", "text/event-stream")
            .json(&json!({"prompt": "a red circle", "steps": steps, "seed": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let headers_at = started.elapsed().as_secs_f64();
        let events = read_sse(resp, |e| e.event == "done" || e.event == "error").await;
        assert_eq!(events.last().map(|e| e.event.as_str()), Some("done"));
        let ended_at = started.elapsed().as_secs_f64();
        // A bound the headers came before and the stream's end well after: a duration
        // taken at the headers is at most that bound, one taken at the end above it.
        let Some(bound) = bounds
            .iter()
            .copied()
            .find(|&b| b >= headers_at && b < 0.8 * ended_at)
        else {
            // The stream was too quick to tell apart from its headers: a longer one.
            steps *= 4;
            continue;
        };
        let mut after = duration_buckets(&s, "/v1/generate").await;
        for _ in 0..40 {
            if above(&after, bound) > above(&before, bound) {
                break;
            }
            // The duration is recorded as the server drops the finished body.
            tokio::time::sleep(Duration::from_millis(50)).await;
            after = duration_buckets(&s, "/v1/generate").await;
        }
        assert!(
            above(&after, bound) > above(&before, bound),
            "headers after {headers_at:.3}s, stream ended after {ended_at:.3}s, but no \
             duration above {bound}s was recorded: {before:?} -> {after:?}"
        );
        return;
    }
    panic!("every stream ended too soon after its headers to measure");
}
