//! Half precision: every fixture family run with its networks in f16 and in bf16 gives
//! images close to diffusers' float32 ones (the stated tolerances below), and a row's
//! prediction stays independent of the rest of its batch in every dtype.

mod common;
#[path = "common/pipeline_runs.rs"]
mod pipeline_runs;

use candle_core::{DType, Device, Tensor};
use common::fixtures;
use latentd_models::pipeline::{load_model_in, Precision};
use pipeline_runs::PixelTolerance;

/// How far pixels may be from diffusers' float32 images, in 1/255. f16 keeps 11
/// significant bits and bf16 8; the rounding compounds over the sampling steps, and
/// the tiny random-weight fixtures amplify it far more than trained weights would. The
/// largest bf16 difference (76/255, measured) is `ldm-tiny`'s ancestral-Euler run, where
/// latents off by 0.5% flip some cells to another codebook entry of the VQ decoder.
fn tolerance(precision: Precision) -> PixelTolerance {
    match precision {
        Precision::F32 => PixelTolerance {
            max: 2.0,
            mean: 2.0,
        },
        Precision::F16 => PixelTolerance {
            max: 8.0,
            mean: 1.0,
        },
        Precision::Bf16 => PixelTolerance {
            max: 96.0,
            mean: 6.0,
        },
    }
}

/// (fixture folder, its recorded runs).
const RUNS: [(&str, &str); 6] = [
    ("sd1-tiny", "sd1-tiny"),
    ("sd2-tiny", "sd2-tiny"),
    ("sd-inpaint-tiny", "sd-inpaint-tiny-edit"),
    ("ldm-text-tiny", "ldm-text-tiny"),
    ("ldm-tiny", "ldm-tiny"),
    ("ldm-sr-tiny", "ldm-sr-tiny"),
];

#[test]
fn half_precision_images_stay_close_to_float32() {
    for precision in [Precision::F16, Precision::Bf16] {
        for (folder, refs) in RUNS {
            let worst = pipeline_runs::check_reference_runs_in(
                &fixtures().join(folder),
                &fixtures().join("refs"),
                refs,
                precision,
                tolerance(precision),
            );
            println!("{folder} in {precision}: largest mean pixel diff {worst:.2}/255");
        }
    }
}

#[test]
fn networks_compute_in_the_chosen_dtype_and_the_sampler_in_f32() {
    let model = load_model_in(
        &fixtures().join("sd1-tiny"),
        None,
        &Device::Cpu,
        Precision::F16,
    )
    .unwrap();
    assert_eq!(model.dtype(), DType::F16);
    let latents = Tensor::zeros((1, 4, 4, 4), DType::F32, &Device::Cpu).unwrap();
    let context = Tensor::zeros((1, 77, 32), DType::F16, &Device::Cpu).unwrap();
    let prediction = model.predict(&latents, &[500.0], Some(&context)).unwrap();
    assert_eq!(prediction.dtype(), DType::F32);
}

/// Deterministic values in [-1, 1) of the given shape.
fn values(shape: &[usize], salt: u64) -> Tensor {
    let len = shape.iter().product::<usize>();
    let data: Vec<f32> = (0..len as u64)
        .map(|i| {
            let x = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15 ^ salt.wrapping_mul(0x1234_5677));
            (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn half_precision_rows_are_bit_identical_alone_and_batched() {
    for precision in [Precision::F16, Precision::Bf16] {
        for (folder, channels, text) in [("sd1-tiny", 4, true), ("ldm-tiny", 3, false)] {
            let model =
                load_model_in(&fixtures().join(folder), None, &Device::Cpu, precision).unwrap();
            let rows = 6;
            let latents = values(&[rows, channels, 8, 8], 1);
            let context = text.then(|| {
                values(&[rows, 77, 32], 2)
                    .to_dtype(precision.dtype())
                    .unwrap()
            });
            let timesteps: Vec<f32> = (0..rows).map(|i| (97 * i + 11) as f32).collect();
            let call = |start: usize, len: usize| {
                let context = context.as_ref().map(|c| c.narrow(0, start, len).unwrap());
                model
                    .predict(
                        &latents.narrow(0, start, len).unwrap(),
                        &timesteps[start..start + len],
                        context.as_ref(),
                    )
                    .unwrap()
            };
            let alone: Vec<Vec<u32>> = (0..rows).map(|i| bits(&call(i, 1))).collect();
            for len in 2..=rows {
                for start in [0, rows - len] {
                    let out = call(start, len);
                    for i in 0..len {
                        assert!(
                            bits(&out.narrow(0, i, 1).unwrap()) == alone[start + i],
                            "{folder} in {precision}: row {} differs in a call of {len} rows",
                            start + i
                        );
                    }
                }
            }
        }
    }
}
