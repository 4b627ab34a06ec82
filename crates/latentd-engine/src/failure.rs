//! How jobs end when something fails: the error event a failed job gets, and the guard
//! that keeps a failing or panicking model call from taking its thread down.

use std::panic::{catch_unwind, AssertUnwindSafe};

use candle_core::Tensor;

use crate::error::Code;
use crate::job::{Event, Job};

/// Fails a job with an error event (no-op if it already ended).
pub(crate) fn fail(job: &Job, code: Code, message: &str) {
    if job.state().is_terminal() {
        return;
    }
    let outcome = if code == Code::Cancelled {
        "cancelled"
    } else {
        "failed"
    };
    metrics::counter!("latentd_jobs_total", "outcome" => outcome).increment(1);
    job.span()
        .in_scope(|| tracing::info!(code = code.as_str(), message, "job ended without images"));
    job.push(Event::Error {
        code,
        message: message.to_string(),
    });
}

/// Runs model code, turning both errors and panics into a message, so that one
/// job's failure never takes its thread down.
pub(crate) fn guarded<T>(f: impl FnOnce() -> latentd_models::Result<T>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(panic_message(panic.as_ref())),
    }
}

/// `internal panic: ...` with the panic's message, when it has one.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .map(|s| format!("internal panic: {s}"))
        .unwrap_or_else(|| "internal panic".to_string())
}

/// Errors when the latents hold NaN or infinity (e.g. a guidance scale that overflows).
///
/// Runs on the latents' device: `0 * x` is 0 for every finite value and NaN otherwise,
/// so its sum is exactly 0 or NaN, and only that one scalar is copied back.
pub(crate) fn check_finite(latents: &Tensor) -> latentd_models::Result<()> {
    let total = (latents * 0.0)?
        .sum_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_scalar::<f32>()?;
    if total.is_finite() {
        Ok(())
    } else {
        Err(latentd_models::Error::InvalidArgument(
            "the sampler produced non-finite values (NaN or infinity)".into(),
        ))
    }
}
