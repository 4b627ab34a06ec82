//! Errors the engine reports to its callers, each with a stable code.

use std::fmt;

/// Every error code latentd reports, in HTTP bodies and `error` events. The server
/// maps each to its HTTP status in one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// A field is invalid or not accepted by the model.
    InvalidRequest,
    /// The body is not JSON.
    MalformedJson,
    /// The body is larger than allowed.
    BodyTooLarge,
    /// No or a wrong API key.
    Unauthorized,
    /// No such route.
    NotFound,
    /// The route does not take this method.
    MethodNotAllowed,
    /// None of the accepted response types can be served.
    NotAcceptable,
    /// No served model has the requested id.
    ModelNotFound,
    /// No such job (or it expired, or was deleted).
    JobNotFound,
    /// The job has no such image (yet).
    ImageNotFound,
    /// The job was cancelled.
    Cancelled,
    /// The queue is full.
    QueueFull,
    /// The server is shutting down.
    ShuttingDown,
    /// Not ready to serve.
    Unavailable,
    /// The shared job store (Redis) cannot be reached.
    JobStoreUnavailable,
    /// The job failed while running (e.g. non-finite values).
    GenerationFailed,
    /// Anything else that went wrong inside.
    Internal,
}

impl Code {
    /// Every code, for documentation and tests.
    pub const ALL: [Code; 17] = [
        Code::InvalidRequest,
        Code::MalformedJson,
        Code::BodyTooLarge,
        Code::Unauthorized,
        Code::NotFound,
        Code::MethodNotAllowed,
        Code::NotAcceptable,
        Code::ModelNotFound,
        Code::JobNotFound,
        Code::ImageNotFound,
        Code::Cancelled,
        Code::QueueFull,
        Code::ShuttingDown,
        Code::Unavailable,
        Code::JobStoreUnavailable,
        Code::GenerationFailed,
        Code::Internal,
    ];

    /// The code on the wire, e.g. `queue_full`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidRequest => "invalid_request",
            Code::MalformedJson => "malformed_json",
            Code::BodyTooLarge => "body_too_large",
            Code::Unauthorized => "unauthorized",
            Code::NotFound => "not_found",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::NotAcceptable => "not_acceptable",
            Code::ModelNotFound => "model_not_found",
            Code::JobNotFound => "job_not_found",
            Code::ImageNotFound => "image_not_found",
            Code::Cancelled => "cancelled",
            Code::QueueFull => "queue_full",
            Code::ShuttingDown => "shutting_down",
            Code::Unavailable => "unavailable",
            Code::JobStoreUnavailable => "job_store_unavailable",
            Code::GenerationFailed => "generation_failed",
            Code::Internal => "internal",
        }
    }
}

impl std::str::FromStr for Code {
    type Err = String;

    /// The code a wire name denotes (`queue_full` -> `Code::QueueFull`).
    fn from_str(name: &str) -> Result<Self, String> {
        Code::ALL
            .into_iter()
            .find(|code| code.as_str() == name)
            .ok_or_else(|| format!("unknown error code `{name}`"))
    }
}

impl serde::Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request field that failed validation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    /// A text-conditioned model got no prompt (an empty string is a valid prompt).
    #[error("`prompt` is required by text-conditioned models (an empty string is a valid prompt)")]
    PromptRequired,
    /// The prompt has more tokens than the text encoder reads.
    #[error("prompt is {tokens} tokens long; the model reads at most {max}")]
    PromptTooLong { tokens: usize, max: usize },
    /// The prompt is larger than is tokenized at all.
    #[error("prompt is {bytes} bytes long; at most {max} bytes are read")]
    PromptTooManyBytes { bytes: usize, max: usize },
    /// `eta` was set for a scheduler that does not use it.
    #[error("eta applies to the ddim scheduler only, not to {scheduler}")]
    EtaNotUsed { scheduler: String },
    /// Width or height is not a positive multiple of the model's size step.
    #[error("{field} must be a positive multiple of {multiple}, got {value}")]
    SizeNotMultiple {
        field: &'static str,
        value: usize,
        multiple: usize,
    },
    /// Width or height is over the configured maximum.
    #[error("{field} {value} exceeds the maximum of {max}")]
    SizeTooLarge {
        field: &'static str,
        value: usize,
        max: usize,
    },
    /// Steps out of range.
    #[error("steps must be between 1 and {max}, got {value}")]
    Steps { value: usize, max: usize },
    /// n out of range.
    #[error("n must be between 1 and {max}, got {value}")]
    Count { value: usize, max: usize },
    /// Guidance scale out of range.
    #[error("guidance_scale must be between 0 and {max}, got {value}")]
    Guidance { value: f64, max: f64 },
    /// eta out of range.
    #[error("eta must be between 0 and 1, got {0}")]
    Eta(f64),
    /// Unknown scheduler name.
    #[error("unknown scheduler `{name}`; available: {available}")]
    UnknownScheduler { name: String, available: String },
    /// The model does not take this field.
    #[error("model `{model}` does not take `{field}`: {reason}")]
    NotAccepted {
        field: &'static str,
        model: String,
        reason: String,
    },
    /// The model needs an input image and none was given.
    #[error("model `{model}` needs an input image (`image`)")]
    ImageRequired { model: String },
    /// The strength is out of range.
    #[error("strength must be greater than 0 and at most 1, got {0}")]
    Strength(f64),
    /// The mask and the image differ in size.
    #[error("the mask is {mask_width}x{mask_height} but the image is {width}x{height}; they must be the same size")]
    MaskSize {
        mask_width: usize,
        mask_height: usize,
        width: usize,
        height: usize,
    },
    /// The input image could not be read.
    #[error("image: {0}")]
    Image(String),
    /// The mask could not be read.
    #[error("mask: {0}")]
    Mask(String),
    /// Any other invalid field.
    #[error("{0}")]
    Other(String),
}

/// Why the engine did not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The request is invalid.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The queue is full; retry after about this many seconds.
    #[error("the queue is full ({queued} jobs waiting); retry in about {retry_after_secs}s")]
    QueueFull {
        queued: usize,
        retry_after_secs: u64,
    },
    /// No served model has this id.
    #[error("unknown model `{name}`; available: {available}")]
    ModelNotFound { name: String, available: String },
    /// No job with this id (or it has expired).
    #[error("no job with id `{0}`")]
    JobNotFound(String),
    /// The job exists but has no image at this index (yet).
    #[error("job `{id}` has no image {index}")]
    ImageNotFound { id: String, index: usize },
    /// The engine is shutting down and takes no new work.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The job failed while running.
    #[error("{message}")]
    JobFailed { code: Code, message: String },
    /// An internal failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl EngineError {
    /// A stable machine-readable code, also used in error events.
    pub fn code(&self) -> Code {
        match self {
            EngineError::Invalid(_) => Code::InvalidRequest,
            EngineError::QueueFull { .. } => Code::QueueFull,
            EngineError::ModelNotFound { .. } => Code::ModelNotFound,
            EngineError::JobNotFound(_) => Code::JobNotFound,
            EngineError::ImageNotFound { .. } => Code::ImageNotFound,
            EngineError::ShuttingDown => Code::ShuttingDown,
            EngineError::JobFailed { code, .. } => *code,
            EngineError::Internal(_) => Code::Internal,
        }
    }
}
