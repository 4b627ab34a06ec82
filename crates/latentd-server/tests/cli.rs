//! `latentd generate` end to end on the tiny fixture.

use std::path::PathBuf;
use std::process::Command;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sd1-tiny")
}

/// A fresh folder for a test's outputs, removed when dropped.
fn out_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("latentd-cli-{tag}-"))
        .tempdir()
        .unwrap()
}

fn latentd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_latentd"))
}

#[test]
fn generate_writes_numbered_pngs_with_metadata() {
    let tmp = out_dir("ok");
    let dir = tmp.path();
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

/// `--dtype f16` and `bf16` run the networks in half precision: the same image up to
/// rounding (the stated tolerance of the model tests' precision check).
#[test]
fn generate_in_half_precision_stays_close_to_float32() {
    let tmp = out_dir("dtype");
    let dir = tmp.path();
    let run = |dtype: &str| {
        let path = dir.join(format!("{dtype}.png"));
        let out = latentd()
            .args(["generate", "--model"])
            .arg(fixture())
            .args(["--prompt", "a red circle", "--steps", "4", "--seed", "3"])
            .args(["--dtype", dtype, "--output"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{dtype}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        latentd_engine::png_meta::decode_png(&std::fs::read(path).unwrap())
            .unwrap()
            .image
            .data
    };
    let full = run("f32");
    for (dtype, mean_tolerance) in [("f16", 1.0), ("bf16", 6.0)] {
        let half = run(dtype);
        assert_eq!(half.len(), full.len());
        // The flag takes effect: rounding moves some pixels.
        assert_ne!(half, full, "{dtype} gave float32's exact image");
        let total: u64 = half
            .iter()
            .zip(&full)
            .map(|(&a, &b)| (a as i64 - b as i64).unsigned_abs())
            .sum();
        let mean = total as f64 / full.len() as f64;
        assert!(
            mean <= mean_tolerance,
            "{dtype}: mean pixel difference {mean}/255"
        );
    }
}

/// A single-file checkpoint with its folder's configs draws the folder's image; one
/// that follows the detection rules loads alone.
#[test]
fn generate_loads_single_file_checkpoints() {
    let fixtures = fixture().join("..");
    let tmp = out_dir("single");
    let dir = tmp.path();
    let run = |model: PathBuf, config: Option<PathBuf>, out: &str| {
        let mut cmd = latentd();
        cmd.args(["generate", "--model"]).arg(model);
        if let Some(config) = config {
            cmd.arg("--model-config").arg(config);
        }
        let out_path = dir.join(out);
        let args = ["--prompt", "a red circle", "--steps", "3", "--seed", "7"];
        let size = ["--width", "32", "--height", "32"];
        cmd.args(args).args(size).arg("--output").arg(&out_path);
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), stderr, std::fs::read(&out_path).ok())
    };
    let file = fixtures.join("single-file/sd1-tiny.safetensors");
    let (code, stderr, single) = run(file.clone(), Some(fixture()), "single.png");
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr, folder) = run(fixture(), None, "folder.png");
    assert_eq!(code, Some(0), "{stderr}");
    let (single, folder) = (single.unwrap(), folder.unwrap());
    let single = latentd_engine::png_meta::decode_png(&single).unwrap();
    let folder = latentd_engine::png_meta::decode_png(&folder).unwrap();
    assert_eq!(single.image.data, folder.image.data);
    assert_eq!(single.metadata().unwrap().model, "sd1-tiny");

    let rules = fixtures.join("single-file/sd1-rules.safetensors");
    let (code, stderr, png) = run(rules, None, "rules.png");
    assert_eq!(code, Some(0), "{stderr}");
    let png = latentd_engine::png_meta::decode_png(&png.unwrap()).unwrap();
    assert_eq!(png.metadata().unwrap().model, "sd1-rules");

    // The flag is for single files: a folder brings its own configs.
    let (code, stderr, _) = run(fixture(), Some(fixture()), "bad.png");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("single-file"), "{stderr}");
}

#[test]
fn bad_sizes_and_schedulers_exit_with_2() {
    let tmp = out_dir("bad");
    let dir = tmp.path();
    for args in [
        vec!["--width", "30"],
        vec!["--height", "0"],
        vec!["--scheduler", "lms"],
        vec!["--steps", "0"],
        // The server's limits hold here too.
        vec!["--steps", "151"],
        vec!["--n", "9"],
        vec!["--width", "1024"],
        // 36 is a multiple of 4 but not of 8.
        vec!["--width", "36"],
        vec!["--dtype", "f64"],
        vec!["--device", "tpu:0"],
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
    let tmp = out_dir("train");
    let dir = tmp.path();
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

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

#[test]
fn generate_covers_every_family() {
    let tmp = out_dir("families");
    let dir = tmp.path();
    let run = |args: &[&str], output: &str| {
        latentd()
            .arg("generate")
            .args(args)
            .arg("--output")
            .arg(dir.join(output))
            .output()
            .unwrap()
    };
    let model = |name: &str| fixtures().join(name).to_string_lossy().into_owned();
    let ldm = model("ldm-tiny");
    let text = model("ldm-text-tiny");
    let sr = model("ldm-sr-tiny");
    let low_res = fixtures()
        .join("refs/ldm-sr-tiny.run0.low_res.png")
        .to_string_lossy()
        .into_owned();

    // Unconditional: no prompt; a prompt or a guidance scale is a usage error.
    let out = run(
        &["--model", &ldm, "--steps", "3", "--seed", "1"],
        "faces.png",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for bad in [&["--prompt", "a face"][..], &["--guidance", "3"][..]] {
        let args: Vec<&str> = ["--model", ldm.as_str()]
            .iter()
            .copied()
            .chain(bad.iter().copied())
            .collect();
        let out = run(&args, "x.png");
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(bad[0].trim_start_matches('-')));
    }

    // Text-to-image with LDM-BERT.
    let out = run(
        &[
            "--model",
            &text,
            "--prompt",
            "a photo of a cat",
            "--steps",
            "2",
        ],
        "cat.png",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(run(&["--model", &text], "x.png").status.code(), Some(2));

    // Super-resolution of a file, checked against diffusers' run0 (5 DDIM steps, seed 0).
    let out = run(
        &[
            "--model",
            &sr,
            "--image",
            &low_res,
            "--steps",
            "5",
            "--seed",
            "0",
            "--scheduler",
            "ddim",
        ],
        "up.png",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png =
        latentd_engine::png_meta::decode_png(&std::fs::read(dir.join("up.png")).unwrap()).unwrap();
    assert_eq!((png.image.width, png.image.height), (32, 32));
    assert_eq!(png.metadata().unwrap().input_image.as_deref(), Some("8x8"));
    let refs = candle_core::safetensors::load(
        fixtures().join("refs/ldm-sr-tiny.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let want = refs["run0.images"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let worst = png
        .image
        .data
        .iter()
        .zip(&want)
        .map(|(&a, &b)| (a as f32 / 255.0 - b).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 2.0 / 255.0, "{}/255", worst * 255.0);
    assert_eq!(run(&["--model", &sr], "x.png").status.code(), Some(2));
    let out = run(&["--model", &sr, "--image", "/no/such.png"], "x.png");
    assert_eq!(out.status.code(), Some(2));
}

/// A recorded 8-bit input of `refs/sd1-tiny-edit` (`[H,W,3]` or `[H,W]`) as an RGB PNG
/// file (a mask as gray RGB, whose luma is the mask itself).
fn write_ref_png(
    refs: &std::collections::HashMap<String, candle_core::Tensor>,
    key: &str,
    path: &std::path::Path,
) {
    let t = &refs[key];
    let dims = t.dims().to_vec();
    let values = t.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let data = if dims.len() == 2 {
        values.iter().flat_map(|&v| [v, v, v]).collect()
    } else {
        values
    };
    let image = latentd_models::pipeline::RgbImage {
        width: dims[1],
        height: dims[0],
        data,
    };
    let meta = latentd_engine::png_meta::ImageMetadata {
        model: "input".into(),
        prompt: String::new(),
        negative_prompt: None,
        width: dims[1],
        height: dims[0],
        steps: 0,
        guidance_scale: 0.0,
        scheduler: String::new(),
        seed: 0,
        n: 1,
        index: 0,
        eta: 0.0,
        input_image: None,
        strength: None,
        mask: false,
    };
    std::fs::write(
        path,
        latentd_engine::png_meta::encode_png(&image, &meta).unwrap(),
    )
    .unwrap();
}

#[test]
fn generate_img2img_and_inpainting_match_diffusers() {
    let tmp = out_dir("edits");
    let dir = tmp.path();
    let refs = candle_core::safetensors::load(
        fixtures().join("refs/sd1-tiny-edit.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let sd = fixtures().join("sd1-tiny").to_string_lossy().into_owned();
    // run0: img2img, ddim, strength 0.6; run6: inpainting, ddim, strength 1 (the default).
    for (run, prompt, seed, strength) in [
        ("run0", "a photo of a cat", "0", Some("0.6")),
        ("run6", "a red door", "10", None),
    ] {
        let image = dir.join(format!("{run}.image.png"));
        write_ref_png(&refs, &format!("{run}.image_u8"), &image);
        let mut args = vec![
            "generate".to_string(),
            "--model".into(),
            sd.clone(),
            "--prompt".into(),
            prompt.into(),
            "--image".into(),
            image.to_string_lossy().into_owned(),
            "--steps".into(),
            "5".into(),
            "--scheduler".into(),
            "ddim".into(),
            "--guidance".into(),
            "7.5".into(),
            "--seed".into(),
            seed.into(),
        ];
        if let Some(s) = strength {
            args.extend(["--strength".into(), s.into()]);
        }
        if refs.contains_key(&format!("{run}.mask_u8")) {
            let mask = dir.join(format!("{run}.mask.png"));
            write_ref_png(&refs, &format!("{run}.mask_u8"), &mask);
            args.extend(["--mask".into(), mask.to_string_lossy().into_owned()]);
        }
        let output = dir.join(format!("{run}.png"));
        args.extend(["--output".into(), output.to_string_lossy().into_owned()]);
        let out = latentd().args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let png = latentd_engine::png_meta::decode_png(&std::fs::read(&output).unwrap()).unwrap();
        let meta = png.metadata().unwrap();
        assert_eq!(
            meta.strength,
            Some(strength.map_or(1.0, |s| s.parse().unwrap()))
        );
        assert_eq!(meta.mask, run == "run6");
        let want = refs[&format!("{run}.images")]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let worst = png
            .image
            .data
            .iter()
            .zip(&want)
            .map(|(&a, &b)| (a as f32 / 255.0 - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 2.0 / 255.0, "{run}: {}/255", worst * 255.0);
    }
    // A mask without an image, and a strength out of range, are usage errors.
    let bad = latentd()
        .args([
            "generate", "--model", &sd, "--prompt", "x", "--mask", "m.png", "--output",
        ])
        .arg(dir.join("x.png"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let image = dir.join("run0.image.png").to_string_lossy().into_owned();
    let bad = latentd()
        .args([
            "generate",
            "--model",
            &sd,
            "--prompt",
            "x",
            "--image",
            &image,
            "--strength",
            "1.5",
            "--output",
        ])
        .arg(dir.join("x.png"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("strength"));
}
