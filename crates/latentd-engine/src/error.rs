//! Errors the engine reports to its callers, each with a stable code.

/// A request field that failed validation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    /// The prompt is empty or only whitespace.
    #[error("prompt must not be empty")]
    EmptyPrompt,
    /// The prompt has more tokens than the text encoder reads.
    #[error("prompt is {tokens} tokens long; the model reads at most {max}")]
    PromptTooLong { tokens: usize, max: usize },
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
    /// The input image could not be read.
    #[error("image: {0}")]
    Image(String),
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
    JobFailed { code: String, message: String },
    /// An internal failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl EngineError {
    /// A stable machine-readable code, also used in error events.
    pub fn code(&self) -> &str {
        match self {
            EngineError::Invalid(_) => "invalid_request",
            EngineError::QueueFull { .. } => "queue_full",
            EngineError::ModelNotFound { .. } => "model_not_found",
            EngineError::JobNotFound(_) => "job_not_found",
            EngineError::ImageNotFound { .. } => "image_not_found",
            EngineError::ShuttingDown => "shutting_down",
            EngineError::JobFailed { code, .. } => code,
            EngineError::Internal(_) => "internal",
        }
    }
}
