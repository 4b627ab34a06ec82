//! `latentd generate` end to end on the tiny fixture.

use std::path::PathBuf;
use std::process::Command;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sd1-tiny")
}

fn out_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("latentd-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn latentd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_latentd"))
}

#[test]
fn generate_writes_numbered_pngs_with_metadata() {
    let dir = out_dir("ok");
    let out = latentd()
        .args(["generate", "--model"])
        .arg(fixture())
        .args([
            "--prompt",
            "a red circle",
            "--steps",
            "3",
            "--seed",
            "7",
            "--n",
            "2",
            "--scheduler",
            "euler-a",
        ])
        .arg("--output")
        .arg(dir.join("img.png"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 0..2 {
        let bytes = std::fs::read(dir.join(format!("img-{i}.png"))).unwrap();
        let png = latentd_engine::png_meta::decode_png(&bytes).unwrap();
        assert_eq!((png.image.width, png.image.height), (32, 32));
        let meta = png.metadata().unwrap();
        assert_eq!((meta.seed, meta.index, meta.steps), (7, i, 3));
        assert_eq!(meta.scheduler, "euler-a");
    }
    assert!(String::from_utf8_lossy(&out.stderr).contains("seed 7"));
}

#[test]
fn bad_sizes_and_schedulers_exit_with_2() {
    let dir = out_dir("bad");
    for args in [
        vec!["--width", "30"],
        vec!["--height", "0"],
        vec!["--scheduler", "lms"],
        vec!["--steps", "0"],
        // 36 is a multiple of 4 but not of 8.
        vec!["--width", "36"],
    ] {
        let out = latentd()
            .args(["generate", "--model"])
            .arg(fixture())
            .args(["--prompt", "x", "--output"])
            .arg(dir.join("x.png"))
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = latentd()
        .args([
            "generate",
            "--model",
            "/no/such/dir",
            "--prompt",
            "x",
            "--output",
        ])
        .arg(dir.join("x.png"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/dir"));
}

#[test]
fn train_demo_quick_writes_a_folder_that_generate_serves() {
    let dir = out_dir("train");
    let model = dir.join("model");
    let out = latentd()
        .args(["train-demo", "--quick", "--out"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in [
        "model_index.json",
        "unet/config.json",
        "vae/config.json",
        "train.log",
    ] {
        assert!(model.join(file).is_file(), "{file} missing");
    }
    let out = latentd()
        .args(["generate", "--model"])
        .arg(&model)
        .args([
            "--prompt",
            "a red circle",
            "--steps",
            "2",
            "--seed",
            "1",
            "--output",
        ])
        .arg(dir.join("img.png"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png =
        latentd_engine::png_meta::decode_png(&std::fs::read(dir.join("img.png")).unwrap()).unwrap();
    assert_eq!(png.image.width % 8, 0);

    let bad = latentd()
        .args(["train-demo", "--out"])
        .arg(dir.join("x"))
        .arg("--config")
        .arg(dir.join("missing.json"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
