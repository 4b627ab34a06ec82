//! `latentd bench` on the tiny fixture: the report covers every size and row count
//! asked for, with the runs it was told to time, and bad arguments are usage errors.

use std::path::PathBuf;
use std::process::Command;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sd1-tiny")
}

fn latentd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_latentd"))
}

#[test]
fn bench_reports_every_part_size_and_row_count() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("bench.json");
    let out = latentd()
        .args(["bench", "--model"])
        .arg(fixture())
        .args([
            "--sizes", "32,64", "--rows", "2,4", "--steps", "2", "--runs", "2",
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("| guided UNet step 64x64, 4 rows |"),
        "{stdout}"
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["implementation"], "latentd");
    assert_eq!(report["device"], "cpu");
    assert_eq!(report["dtype"], "f32");
    assert!(report["peak_rss_mib"].as_f64().unwrap() > 1.0);
    let parts: Vec<(String, u64, u64)> = report["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let runs = m["runs_s"].as_array().unwrap();
            assert_eq!(runs.len(), 2, "{m}");
            let (median, min) = (
                m["median_s"].as_f64().unwrap(),
                m["min_s"].as_f64().unwrap(),
            );
            assert!(min > 0.0 && min <= median, "{m}");
            (
                m["part"].as_str().unwrap().to_string(),
                m["size"].as_u64().unwrap(),
                m["rows"].as_u64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, u64, u64)> = [
        ("text_encoder", 0, 0),
        ("unet_step", 32, 2),
        ("unet_step", 32, 4),
        ("unet_step", 64, 2),
        ("unet_step", 64, 4),
        ("vae_decode", 64, 0),
        ("generation", 64, 2),
    ]
    .iter()
    .map(|(p, s, r)| (p.to_string(), *s, *r))
    .collect();
    assert_eq!(parts, want);
}

#[test]
fn bench_rejects_bad_arguments_with_2() {
    for args in [
        vec!["--rows", "3"],
        vec!["--rows", "0"],
        vec!["--sizes", "30"],
        vec!["--runs", "0"],
        vec!["--device", "tpu:0"],
        vec!["--dtype", "f64"],
    ] {
        let out = latentd()
            .args(["bench", "--model"])
            .arg(fixture())
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
}
