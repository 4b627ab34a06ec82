//! Writes a PNG grid of sampled scenes and prints their captions with the
//! analyser's verdicts.
//!
//! `cargo run -p latentd-demo --example grid -- OUT.png [COUNT] [SIDE] [SEED]`
//! (defaults: 64 scenes, 32 px, seed 0). Scenes are laid out row by row,
//! eight per row, with a 2 px gutter.

use std::error::Error;
use std::fs::File;
use std::io::BufWriter;

use latentd_demo::{analyse, caption, parse, render, sample_indexed, RgbImage, SamplerConfig};

const COLUMNS: u32 = 8;
const GUTTER: u32 = 2;

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = args
        .first()
        .ok_or("usage: grid OUT.png [COUNT] [SIDE] [SEED]")?;
    let count: u32 = args.get(1).map_or(Ok(64), |s| s.parse())?;
    let side: u32 = args.get(2).map_or(Ok(32), |s| s.parse())?;
    let seed: u64 = args.get(3).map_or(Ok(0), |s| s.parse())?;

    let cfg = SamplerConfig::default();
    let mut tiles = Vec::new();
    for i in 0..count {
        let scene = sample_indexed(seed, u64::from(i), &cfg);
        let text = caption(&scene);
        let img = render(&scene, side)?;
        let verdict = analyse(&img, &parse(&text)?);
        println!(
            "{i:4} {} {text}",
            if verdict.matches_all() {
                "ok  "
            } else {
                "FAIL"
            }
        );
        tiles.push(img);
    }
    let rows = count.div_ceil(COLUMNS).max(1);
    let cell = side + GUTTER;
    let (width, height) = (COLUMNS * cell + GUTTER, rows * cell + GUTTER);
    let mut canvas = vec![40u8; (width * height * 3) as usize];
    for (k, tile) in (0u32..).zip(&tiles) {
        paste(
            &mut canvas,
            width,
            tile,
            GUTTER + (k % COLUMNS) * cell,
            GUTTER + (k / COLUMNS) * cell,
        );
    }
    let mut encoder = png::Encoder::new(BufWriter::new(File::create(out)?), width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header()?.write_image_data(&canvas)?;
    println!("wrote {out} ({width}x{height})");
    Ok(())
}

/// Copies `tile` into the RGB canvas of width `width` at `(x0, y0)`.
fn paste(canvas: &mut [u8], width: u32, tile: &RgbImage, x0: u32, y0: u32) {
    let row_bytes = (tile.width() * 3) as usize;
    for (y, row) in (0u32..).zip(tile.as_bytes().chunks_exact(row_bytes)) {
        let start = (((y0 + y) * width + x0) * 3) as usize;
        if let Some(dst) = canvas.get_mut(start..start + row_bytes) {
            dst.copy_from_slice(row);
        }
    }
}
