//! Picking a seed when the user gives none, and unguessable job ids.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seeds latentd picks stay below this (2^53), so that they survive JSON parsers that
/// read numbers as doubles (JavaScript); clients may send any u64.
pub const MAX_PICKED_SEED: u64 = 1 << 53;

/// A fresh seed below [`MAX_PICKED_SEED`] from the clock and the process id, mixed with
/// SplitMix64 so that seeds picked close together differ in every bit.
pub fn random_seed() -> u64 {
    random_bits() % MAX_PICKED_SEED
}

/// 64 mixed bits from the clock, the process id and a counter.
fn random_bits() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let counter = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    splitmix64(nanos ^ ((std::process::id() as u64) << 32) ^ counter.wrapping_mul(0x9E37_79B9))
}

/// A fresh job id: `job_` and 128 bits from the operating system's random source, in
/// hex, so that ids cannot be guessed from each other or from the clock.
pub fn random_job_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness (never seen on supported platforms): still unique.
        let (a, b) = (random_bits(), random_bits());
        bytes[..8].copy_from_slice(&a.to_le_bytes());
        bytes[8..].copy_from_slice(&b.to_le_bytes());
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("job_{hex}")
}

static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    #[test]
    fn successive_seeds_differ() {
        let a = super::random_seed();
        let b = super::random_seed();
        assert_ne!(a, b);
        assert!((0..1000).all(|_| super::random_seed() < super::MAX_PICKED_SEED));
    }

    #[test]
    fn job_ids_carry_128_random_bits() {
        let a = super::random_job_id();
        assert_eq!(a.len(), 4 + 32);
        assert!(a.starts_with("job_") && a[4..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, super::random_job_id());
    }
}
