//! How a job is written in Redis: its hash fields and its events.

use std::collections::HashMap;

use latentd_engine::{Code, Event, JobSnapshot, JobState};
use serde::{Deserialize, Serialize};

/// An event as stored in a job's event stream. Images are stored apart (their PNG
/// under its own key); the event only says which.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub(crate) enum StoredEvent {
    Queued {
        position: usize,
    },
    Started,
    Progress {
        step: usize,
        total: usize,
        eta_ms: u64,
    },
    Image {
        index: usize,
        seed: u64,
    },
    Done {
        queue_ms: u64,
        inference_ms: u64,
        seed: u64,
    },
    Error {
        code: String,
        message: String,
    },
}

impl StoredEvent {
    /// The stored form of a job event (an image without its PNG).
    pub(crate) fn of(event: &Event) -> Self {
        match event {
            Event::Queued { position } => Self::Queued {
                position: *position,
            },
            Event::Started => Self::Started,
            Event::Progress {
                step,
                total,
                eta_ms,
            } => Self::Progress {
                step: *step,
                total: *total,
                eta_ms: *eta_ms,
            },
            Event::Image { index, seed, .. } => Self::Image {
                index: *index,
                seed: *seed,
            },
            Event::Done {
                queue_ms,
                inference_ms,
                seed,
            } => Self::Done {
                queue_ms: *queue_ms,
                inference_ms: *inference_ms,
                seed: *seed,
            },
            Event::Error { code, message } => Self::Error {
                code: code.as_str().to_string(),
                message: message.clone(),
            },
        }
    }

    /// The job event again, with `png` for an image.
    pub(crate) fn into_event(self, png: Option<bytes::Bytes>) -> Event {
        match self {
            Self::Queued { position } => Event::Queued { position },
            Self::Started => Event::Started,
            Self::Progress {
                step,
                total,
                eta_ms,
            } => Event::Progress {
                step,
                total,
                eta_ms,
            },
            Self::Image { index, seed } => Event::Image {
                index,
                seed,
                png: png.unwrap_or_default(),
            },
            Self::Done {
                queue_ms,
                inference_ms,
                seed,
            } => Event::Done {
                queue_ms,
                inference_ms,
                seed,
            },
            Self::Error { code, message } => Event::Error {
                code: code.parse().unwrap_or(Code::Internal),
                message,
            },
        }
    }

    /// The JSON written to Redis.
    pub(crate) fn to_json(&self) -> String {
        // A plain enum of numbers and strings always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The wire name of a state, as the `state` field holds it.
pub(crate) fn state_name(state: JobState) -> &'static str {
    match state {
        JobState::Queued => "queued",
        JobState::Running => "running",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}

fn parse_state(name: &str) -> Option<JobState> {
    [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ]
    .into_iter()
    .find(|s| state_name(*s) == name)
}

/// A job's hash read back as a snapshot; `None` when the fields are not a job's.
pub(crate) fn snapshot(
    id: &str,
    fields: &HashMap<String, String>,
    now_ms: u64,
) -> Option<JobSnapshot> {
    let number = |name: &str| -> u64 { fields.get(name).and_then(|v| v.parse().ok()).unwrap_or(0) };
    let state = parse_state(fields.get("state")?)?;
    let created = number("created_ms");
    let started = number("started_ms");
    let finished = number("finished_ms");
    let end = if finished > 0 { finished } else { now_ms };
    let queue_ms = if started > 0 { started } else { end }.saturating_sub(created);
    let inference_ms = (started > 0).then(|| end.saturating_sub(started));
    let error = match (fields.get("error_code"), fields.get("error_message")) {
        (Some(code), Some(message)) if !code.is_empty() => {
            Some((code.parse().unwrap_or(Code::Internal), message.clone()))
        }
        _ => None,
    };
    Some(JobSnapshot {
        id: id.to_string(),
        state,
        step: number("step") as usize,
        total: number("total") as usize,
        images_ready: number("images_ready") as usize,
        n: number("n") as usize,
        seed: number("seed"),
        queue_ms,
        inference_ms,
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_without_their_png() {
        let events = [
            Event::Queued { position: 3 },
            Event::Started,
            Event::Progress {
                step: 2,
                total: 5,
                eta_ms: 40,
            },
            Event::Image {
                index: 1,
                seed: 9,
                png: bytes::Bytes::from_static(b"png"),
            },
            Event::Done {
                queue_ms: 1,
                inference_ms: 2,
                seed: 9,
            },
            Event::Error {
                code: Code::Cancelled,
                message: "x".into(),
            },
        ];
        for event in events {
            let stored = StoredEvent::of(&event);
            let back: StoredEvent = serde_json::from_str(&stored.to_json()).unwrap();
            let png =
                matches!(event, Event::Image { .. }).then(|| bytes::Bytes::from_static(b"png"));
            assert_eq!(back.into_event(png), event);
        }
    }

    #[test]
    fn a_hash_reads_back_as_a_snapshot() {
        let fields: HashMap<String, String> = [
            ("state", "failed"),
            ("step", "3"),
            ("total", "6"),
            ("n", "2"),
            ("seed", "18446744073709551615"),
            ("created_ms", "1000"),
            ("started_ms", "1500"),
            ("finished_ms", "4000"),
            ("error_code", "generation_failed"),
            ("error_message", "non-finite"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let s = snapshot("job_1", &fields, 9999).unwrap();
        assert_eq!(s.state, JobState::Failed);
        assert_eq!((s.step, s.total, s.n, s.seed), (3, 6, 2, u64::MAX));
        assert_eq!((s.queue_ms, s.inference_ms), (500, Some(2500)));
        assert_eq!(s.error.unwrap().0, Code::GenerationFailed);
        assert!(snapshot("x", &HashMap::new(), 0).is_none());
    }
}
