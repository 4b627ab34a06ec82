//! A row's UNet prediction is bit-identical however many other rows share the call,
//! wherever it sits in the batch: step-level batching can never change a job's pixels.
//! (The CPU GEMM picks kernels by shape; see `nn::batch_invariant`.)

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use latentd_models::pipeline::load_model;

/// Deterministic values in [-1, 1) of the given shape.
fn values(shape: &[usize], salt: u64) -> Tensor {
    let len = shape.iter().product::<usize>();
    let data: Vec<f32> = (0..len as u64)
        .map(|i| {
            let x =
                (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15 ^ salt.wrapping_mul(0x1234_5678_9ABC));
            (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v.iter().map(|x| x.to_bits()).collect()
}

/// A text context's `(tokens, width)`.
type Context = Option<(usize, usize)>;

/// (fixture folder, UNet input channels, text context).
const MODELS: [(&str, usize, Context); 6] = [
    ("sd1-tiny", 4, Some((77, 32))),
    ("sd2-tiny", 4, Some((77, 32))),
    ("sd-inpaint-tiny", 9, Some((77, 32))),
    ("ldm-text-tiny", 4, Some((77, 32))),
    ("ldm-tiny", 3, None),
    ("ldm-sr-tiny", 6, None),
];

#[test]
fn unet_rows_are_bit_identical_alone_and_batched() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    for (folder, channels, text) in MODELS {
        let model = load_model(&fixtures.join(folder), None, &Device::Cpu).unwrap();
        for side in [4, 8, 16] {
            let rows = 10;
            let latents = values(&[rows, channels, side, side], 1);
            let context = text.map(|(t, d)| values(&[rows, t, d], 2));
            let timesteps: Vec<f32> = (0..rows).map(|i| (97 * i + 11) as f32).collect();
            let call = |range: std::ops::Range<usize>| {
                let context = context
                    .as_ref()
                    .map(|c| c.narrow(0, range.start, range.len()).unwrap());
                model
                    .predict(
                        &latents.narrow(0, range.start, range.len()).unwrap(),
                        &timesteps[range.clone()],
                        context.as_ref(),
                    )
                    .unwrap()
            };
            let alone: Vec<Vec<u32>> = (0..rows).map(|i| bits(&call(i..i + 1))).collect();
            // Every contiguous window of rows, from pairs (a guided job) to all ten.
            for len in 2..=rows {
                for start in [0, rows - len] {
                    let out = call(start..start + len);
                    for i in 0..len {
                        assert!(
                            bits(&out.narrow(0, i, 1).unwrap()) == alone[start + i],
                            "{folder} at {side}x{side}: row {} differs in a call of {len} rows",
                            start + i
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn decoded_images_are_identical_alone_and_batched() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    for (folder, _, _) in MODELS {
        let model = load_model(&fixtures.join(folder), None, &Device::Cpu).unwrap();
        let channels = model.info().latent_channels;
        for side in [4, 8] {
            let rows = 6;
            let latents = values(&[rows, channels, side, side], 3);
            let decode = |start: usize, len: usize| {
                model
                    .decode(&latents.narrow(0, start, len).unwrap())
                    .unwrap()
            };
            let alone: Vec<_> = (0..rows).map(|i| decode(i, 1).remove(0).data).collect();
            for len in 2..=rows {
                for start in [0, rows - len] {
                    for (i, image) in decode(start, len).into_iter().enumerate() {
                        assert!(
                            image.data == alone[start + i],
                            "{folder} at {side}x{side}: image {} differs decoded with {len}",
                            start + i
                        );
                    }
                }
            }
        }
    }
}
