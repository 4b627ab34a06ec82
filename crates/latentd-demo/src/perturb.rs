//! Deterministic image degradations that imitate a generative model's output
//! (soft edges, pixel noise), for testing the analyser's robustness.

use crate::image::RgbImage;
use crate::rng::Rng;

/// Blurs with the separable binomial kernel `[1, 2, 1] / 4` applied `passes`
/// times (a Gaussian of standard deviation `sqrt(passes / 2)` pixels), with
/// edge pixels repeated; integer arithmetic, rounded per pass.
pub fn blur(img: &RgbImage, passes: u32) -> RgbImage {
    let mut out = img.clone();
    for _ in 0..passes {
        out = pass(&pass(&out, true), false);
    }
    out
}

/// One `[1, 2, 1] / 4` pass along rows (`horizontal`) or columns.
fn pass(img: &RgbImage, horizontal: bool) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let mut out = img.clone();
    let at = |x: i64, y: i64| {
        let x = x.clamp(0, i64::from(w) - 1) as u32;
        let y = y.clamp(0, i64::from(h) - 1) as u32;
        img.get(x, y).unwrap_or([0, 0, 0])
    };
    for y in 0..i64::from(h) {
        for x in 0..i64::from(w) {
            let (a, b, c) = if horizontal {
                (at(x - 1, y), at(x, y), at(x + 1, y))
            } else {
                (at(x, y - 1), at(x, y), at(x, y + 1))
            };
            let v = [0, 1, 2]
                .map(|k| ((u32::from(a[k]) + 2 * u32::from(b[k]) + u32::from(c[k]) + 2) / 4) as u8);
            out.set(x as u32, y as u32, v);
        }
    }
    out
}

/// Adds independent, approximately Gaussian noise of standard deviation
/// `sigma` (in 0-255 units) to every channel, clamped to 0-255.
pub fn add_noise(img: &RgbImage, rng: &mut Rng, sigma: f64) -> RgbImage {
    let mut out = img.clone();
    for y in 0..img.height() {
        for x in 0..img.width() {
            if let Some(p) = img.get(x, y) {
                let noisy = p.map(|v| {
                    (f64::from(v) + sigma * rng.normal())
                        .round()
                        .clamp(0.0, 255.0) as u8
                });
                out.set(x, y, noisy);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blur_preserves_flat_images_and_spreads_a_dot() {
        let flat = RgbImage::filled(16, 16, [10, 20, 30]).unwrap();
        assert_eq!(blur(&flat, 2), flat);
        let mut dot = RgbImage::filled(16, 16, [0, 0, 0]).unwrap();
        dot.set(8, 8, [160, 160, 160]);
        let b = blur(&dot, 1);
        assert_eq!(b.get(8, 8), Some([40, 40, 40]));
        assert_eq!(b.get(7, 7), Some([10, 10, 10]));
        assert_eq!(b.get(9, 8), Some([20, 20, 20]));
    }

    #[test]
    fn noise_is_seeded_and_roughly_sigma() {
        let img = RgbImage::filled(32, 32, [128, 128, 128]).unwrap();
        let a = add_noise(&img, &mut Rng::new(1), 8.0);
        assert_eq!(a, add_noise(&img, &mut Rng::new(1), 8.0));
        let n = a.as_bytes().len() as f64;
        let var = a
            .as_bytes()
            .iter()
            .map(|&v| (f64::from(v) - 128.0).powi(2))
            .sum::<f64>()
            / n;
        assert!((var.sqrt() - 8.0).abs() < 0.5, "{}", var.sqrt());
    }
}
