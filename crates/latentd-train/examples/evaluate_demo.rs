//! Scores a trained demo model on held-out captions and writes a sample grid:
//! `cargo run --release -p latentd-train --example evaluate_demo -- MODEL_DIR [CAPTIONS] [GUIDANCE...]`
//! (defaults: 100 captions, 2 seeds each, guidance 1 and 4).

use std::path::PathBuf;

use candle_core::Device;
use latentd_models::pipeline::StableDiffusion;
use latentd_train::eval::{evaluate_pipeline, held_out_captions, reconstruction};
use latentd_train::grid::write_grid;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = PathBuf::from(
        args.first()
            .ok_or("usage: evaluate_demo MODEL_DIR [CAPTIONS] [GUIDANCE...]")?,
    );
    let n: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(100);
    let mut scales: Vec<f64> = args
        .iter()
        .skip(2)
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    if scales.is_empty() {
        scales = vec![1.0, 4.0];
    }
    let pipe = StableDiffusion::load(&dir, &Device::Cpu)?;
    println!("{}", serde_json::to_string(&reconstruction(&pipe, 200)?)?);
    let captions = held_out_captions(n)?;
    for &guidance in &scales {
        let report = evaluate_pipeline(&pipe, &captions, &[0, 1], guidance)?;
        println!("{}", serde_json::to_string(&report)?);
    }
    let prompts = [
        "a red circle",
        "a blue square on a white background",
        "a large green triangle at the top left",
        "a yellow circle left of a purple square",
        "a small cyan triangle above an orange circle on a gray background",
    ];
    let grid = dir.join("samples.png");
    write_grid(
        &pipe,
        &prompts,
        &[0, 1, 2, 3, 4, 5],
        *scales.last().unwrap_or(&4.0),
        4,
        &grid,
    )?;
    println!("grid: {}", grid.display());
    Ok(())
}
