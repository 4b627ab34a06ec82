//! Helpers the CPU benchmarks share.

use std::time::Duration;

/// The environment variable `name`, or `default`.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// (min, median) of the timed runs, in seconds.
pub fn summary(times: &[Duration]) -> (f64, f64) {
    let mut secs: Vec<f64> = times.iter().map(Duration::as_secs_f64).collect();
    secs.sort_by(f64::total_cmp);
    let min = secs.first().copied().unwrap_or(f64::NAN);
    let n = secs.len();
    let median = match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => secs[n / 2],
        _ => (secs[n / 2 - 1] + secs[n / 2]) / 2.0,
    };
    (min, median)
}
