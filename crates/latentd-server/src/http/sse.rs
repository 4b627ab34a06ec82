//! Job events as server-sent events.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures_util::stream::{self, Stream};
use latentd_engine::{Event, EventStream};
use serde_json::json;

use super::CancelOnDrop;
use crate::shared_jobs::RedisEvents;

/// The SSE frame for one job event; its id is the event's index in the job's log.
pub fn to_sse(id: usize, event: &Event) -> SseEvent {
    let data = match event {
        Event::Queued { position } => json!({ "position": position }),
        Event::Started => json!({}),
        Event::Progress {
            step,
            total,
            eta_ms,
        } => {
            json!({ "step": step, "total": total, "eta_ms": eta_ms })
        }
        Event::Image { index, seed, png } => json!({
            "index": index,
            "seed": seed,
            "png_base64": base64::engine::general_purpose::STANDARD.encode(png),
        }),
        Event::Done {
            queue_ms,
            inference_ms,
            seed,
        } => {
            json!({ "queue_ms": queue_ms, "inference_ms": inference_ms, "seed": seed })
        }
        Event::Error { code, message } => json!({ "code": code, "message": message }),
    };
    SseEvent::default()
        .id(id.to_string())
        .event(event.name())
        .data(data.to_string())
}

/// Streams a job's events. With a `guard`, the job is cancelled when the client
/// goes away before the job ends.
pub fn respond(events: EventStream, guard: Option<CancelOnDrop>) -> Response {
    sse_response(event_stream(events, guard))
}

/// Streams a shared job's events as the job store records them.
pub fn respond_shared(events: RedisEvents) -> Response {
    sse_response(stream::unfold(events, |mut events| async move {
        let (id, event) = events.next().await?;
        Some((Ok(to_sse(id, &event)), events))
    }))
}

/// An SSE response with keep-alives, unbuffered by proxies.
fn sse_response(
    stream: impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static,
) -> Response {
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
        .into_response();
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    response
}

fn event_stream(
    events: EventStream,
    guard: Option<CancelOnDrop>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    stream::unfold((events, guard), |(mut events, guard)| async move {
        let (id, event) = events.next().await?;
        let frame = to_sse(id, &event);
        if event.is_terminal() {
            // The job ended: a disconnect from now on must not cancel anything.
            if let Some(g) = &guard {
                g.disarm();
            }
        }
        Some((Ok(frame), (events, guard)))
    })
}
