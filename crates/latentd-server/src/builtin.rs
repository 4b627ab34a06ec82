//! The built-in model: a small latent diffusion model trained by latentd itself
//! (`latentd train-demo`), embedded in the binary, served when no `--model` is given.
//!
//! It is a diffusers-layout folder like any other. At startup its files are unpacked
//! into a cache folder named by their hash and loaded by the same loader as every
//! Stable Diffusion folder: nothing in serving special-cases it.

use std::io::Write;
use std::path::{Path, PathBuf};

mod files {
    include!(concat!(env!("OUT_DIR"), "/builtin_model.rs"));
}

/// The model id the built-in model is served under.
pub const MODEL_NAME: &str = "latentd-demo";

/// Total size of the embedded files in bytes.
pub fn size_bytes() -> usize {
    files::FILES.iter().map(|(_, bytes)| bytes.len()).sum()
}

/// Whether this build embeds a model.
pub fn is_embedded() -> bool {
    !files::FILES.is_empty()
}

/// Unpacks the built-in model (once per content hash) and returns its folder.
///
/// The folder is `$LATENTD_CACHE_DIR`, else `$XDG_CACHE_HOME/latentd`, else the system
/// temporary folder, plus `builtin-<hash>`.
pub fn unpack() -> std::io::Result<PathBuf> {
    unpack_in(&cache_base())
}

/// Like [`unpack`], into `base/builtin-<hash>` instead of the cache folder.
pub fn unpack_in(base: &Path) -> std::io::Result<PathBuf> {
    if !is_embedded() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "this build embeds no built-in model yet (train one with `latentd train-demo`); \
             pass --model DIR",
        ));
    }
    unpack_files(files::FILES, files::HASH, base)
}

/// Writes `files` into `base/builtin-<hash>` unless a complete copy is there, and
/// returns that folder. Files go to a scratch folder first and are renamed into place,
/// so a concurrent start never sees a half-written model.
pub fn unpack_files(files: &[(&str, &[u8])], hash: u64, base: &Path) -> std::io::Result<PathBuf> {
    let dir = base.join(format!("builtin-{hash:016x}"));
    if is_complete(&dir) {
        return Ok(dir);
    }
    std::fs::create_dir_all(base)?;
    let scratch = base.join(format!(".builtin-{hash:016x}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    for (rel, bytes) in files {
        if rel.split('/').any(|part| part == ".." || part.is_empty()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("bad embedded path {rel}"),
            ));
        }
        let path = scratch.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut f = std::fs::File::create(&path)?;
        f.write_all(bytes)?;
    }
    std::fs::write(scratch.join(COMPLETE), format!("{hash:016x}\n"))?;
    match std::fs::rename(&scratch, &dir) {
        Ok(()) => Ok(dir),
        // Another process won the race: use its copy.
        Err(_) if is_complete(&dir) => {
            let _ = std::fs::remove_dir_all(&scratch);
            Ok(dir)
        }
        Err(e) => Err(e),
    }
}

const COMPLETE: &str = ".complete";

fn is_complete(dir: &Path) -> bool {
    dir.join(COMPLETE).is_file()
}

fn cache_base() -> PathBuf {
    if let Some(dir) = std::env::var_os("LATENTD_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("latentd");
    }
    std::env::temp_dir().join("latentd")
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use latentd_models::pipeline::{DiffusionModel, StableDiffusion};

    /// The files of a fixture folder, as build.rs would embed them.
    fn fixture_files() -> Vec<(String, Vec<u8>)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sd1-tiny");
        let mut out = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let rel = path
                        .strip_prefix(&root)
                        .unwrap()
                        .to_string_lossy()
                        .replace('\\', "/");
                    out.push((rel, std::fs::read(&path).unwrap()));
                }
            }
        }
        out
    }

    #[test]
    fn unpacks_once_and_the_loader_serves_the_folder() {
        let owned = fixture_files();
        let files: Vec<(&str, &[u8])> = owned
            .iter()
            .map(|(p, b)| (p.as_str(), b.as_slice()))
            .collect();
        let tmp = tempfile::Builder::new()
            .prefix("latentd-builtin-test-")
            .tempdir()
            .unwrap();
        let base = tmp.path();
        let dir = unpack_files(&files, 0xabc, base).unwrap();
        for (rel, bytes) in &files {
            assert_eq!(&std::fs::read(dir.join(rel)).unwrap(), bytes, "{rel}");
        }
        // A second start reuses the complete copy.
        std::fs::write(dir.join("marker"), b"kept").unwrap();
        assert_eq!(unpack_files(&files, 0xabc, base).unwrap(), dir);
        assert!(dir.join("marker").is_file());
        let pipe = StableDiffusion::load_named(&dir, MODEL_NAME, &Device::Cpu).unwrap();
        assert_eq!(pipe.info().name, MODEL_NAME);
        // Paths that would escape the folder are refused.
        let bad: Vec<(&str, &[u8])> = vec![("../evil", b"x")];
        assert!(unpack_files(&bad, 1, base).is_err());
    }

    #[test]
    fn embedded_model_state_is_reported() {
        // Into a folder of the test's own, not the shared cache.
        let base = tempfile::Builder::new()
            .prefix("latentd-builtin-state-")
            .tempdir()
            .unwrap();
        match unpack_in(base.path()) {
            Ok(dir) => {
                assert!(is_embedded());
                assert!(dir.join("model_index.json").is_file());
                assert!(
                    size_bytes() <= 20 * 1024 * 1024,
                    "the built-in model must stay <= 20 MB"
                );
            }
            Err(e) => {
                assert!(!is_embedded());
                assert!(e.to_string().contains("--model"), "{e}");
            }
        }
    }
}
