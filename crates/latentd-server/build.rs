//! Embeds the built-in model: every file under `assets/demo-model/` becomes an
//! `include_bytes!` entry of a generated table, with a content hash that names the
//! cache folder the files are unpacked into at run time. Without that folder the
//! table is empty and `latentd serve` asks for `--model`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let assets = manifest.join("assets");
    let root = assets.join("demo-model");
    // Watch the (always present) assets folder: adding demo-model/ changes it.
    println!("cargo:rerun-if-changed={}", assets.display());
    if root.is_dir() {
        println!("cargo:rerun-if-changed={}", root.display());
    }
    let mut files = Vec::new();
    collect(&root, &root, &mut files);
    files.sort();

    // FNV-1a over names and contents: a new model gets a new cache folder.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut table = String::from("&[\n");
    for (rel, path) in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        let bytes = std::fs::read(path).expect("readable model file");
        for b in rel.as_bytes().iter().chain(bytes.iter()) {
            hash ^= *b as u64;
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let _ = writeln!(
            table,
            "    ({rel:?}, include_bytes!({:?})),",
            path.display().to_string()
        );
    }
    table.push(']');
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    let code = format!(
        "/// Files of the built-in model: (path relative to the folder, contents).\n\
         pub static FILES: &[(&str, &[u8])] = {table};\n\
         /// Hash of every name and byte of [`FILES`].\n\
         pub const HASH: u64 = {hash:#x};\n"
    );
    std::fs::write(out.join("builtin_model.rs"), code).expect("writable OUT_DIR");
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(root, &path, out);
        } else if let Ok(rel) = path.strip_prefix(root) {
            let rel = rel.to_string_lossy().replace('\\', "/");
            out.push((rel, path));
        }
    }
}
