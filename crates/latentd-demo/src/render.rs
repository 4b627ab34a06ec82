//! Rasterising scenes to anti-aliased RGB8 images.
//!
//! Each pixel is sampled on a 4x4 grid; its colour is the background blended
//! towards the object colour by the share of samples inside the shape, in
//! integer arithmetic. Geometry uses only exact floating-point operations, so
//! renders are identical across platforms.

use crate::error::Result;
use crate::image::{check_side, RgbImage};
use crate::scene::{Scene, Shape, SIDE};

/// The default image side.
pub const DEFAULT_SIDE: u32 = 32;

/// Samples per pixel along each axis.
const SUPERSAMPLE: u32 = 4;

/// The share of pixel `(px, py)` (its unit square) covered by `shape` with
/// centroid `(cx, cy)` and size `size`, all in pixels; multiples of 1/16.
pub fn pixel_coverage(shape: Shape, cx: f64, cy: f64, size: f64, px: u32, py: u32) -> f64 {
    f64::from(covered_samples(shape, cx, cy, size, px, py)) / f64::from(SUPERSAMPLE * SUPERSAMPLE)
}

/// How many of the pixel's 4x4 samples lie inside the shape.
fn covered_samples(shape: Shape, cx: f64, cy: f64, size: f64, px: u32, py: u32) -> u32 {
    let step = 1.0 / f64::from(SUPERSAMPLE);
    let mut n = 0;
    for j in 0..SUPERSAMPLE {
        let y = f64::from(py) + (f64::from(j) + 0.5) * step;
        for i in 0..SUPERSAMPLE {
            let x = f64::from(px) + (f64::from(i) + 0.5) * step;
            n += u32::from(shape.contains(cx, cy, size, x, y));
        }
    }
    n
}

/// Renders `scene` as a `side` x `side` image (`side` within
/// [`crate::image::MIN_SIDE`]..=[`crate::image::MAX_SIDE`]).
pub fn render(scene: &Scene, side: u32) -> Result<RgbImage> {
    check_side(side)?;
    let mut img = RgbImage::filled(side, side, scene.background.rgb())?;
    let scale = f64::from(side) / f64::from(SIDE);
    let full = SUPERSAMPLE * SUPERSAMPLE;
    for object in scene.objects() {
        let [left, top, right, bottom] = object.bounds().map(|v| v * scale);
        let (cx, cy) = (
            f64::from(object.centre.x) * scale,
            f64::from(object.centre.y) * scale,
        );
        let size = f64::from(object.size.milli()) * scale;
        let colour = object.colour.rgb();
        let clamp = |v: f64| (v.max(0.0) as u32).min(side - 1);
        for py in clamp(top.floor())..=clamp(bottom.ceil()) {
            for px in clamp(left.floor())..=clamp(right.ceil()) {
                let n = covered_samples(object.shape, cx, cy, size, px, py);
                if n == 0 {
                    continue;
                }
                if let Some(old) = img.get(px, py) {
                    let mix = |o: u8, c: u8| {
                        ((u32::from(o) * (full - n) + u32::from(c) * n + full / 2) / full) as u8
                    };
                    img.set(px, py, [0, 1, 2].map(|k| mix(old[k], colour[k])));
                }
            }
        }
    }
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scene::{Background, Colour, Content, Object, Point, Size};

    fn square_scene() -> Scene {
        Scene {
            background: Background::Black,
            background_stated: false,
            content: Content::One {
                object: Object {
                    shape: Shape::Square,
                    colour: Colour::Red,
                    size: Size::Large,
                    centre: Point { x: 500, y: 500 },
                    size_stated: false,
                },
                position_stated: false,
            },
        }
    }

    #[test]
    fn renders_a_square_with_exact_area() {
        let img = render(&square_scene(), 40).unwrap();
        // A 16 px square centred in a 40 px image covers pixels 12..28 exactly.
        let red = img.pixels().filter(|&p| p == Colour::Red.rgb()).count();
        assert_eq!(red, 16 * 16);
        assert_eq!(img.get(11, 20), Some([0, 0, 0]));
        assert_eq!(img.get(12, 12), Some(Colour::Red.rgb()));
    }

    #[test]
    fn coverage_sums_to_the_shape_area() {
        for &shape in Shape::ALL {
            let mut total = 0.0;
            for py in 0..40 {
                for px in 0..40 {
                    total += pixel_coverage(shape, 20.3, 19.7, 15.0, px, py);
                }
            }
            let area = shape.fill() * 225.0;
            assert!(
                (total - area).abs() < 0.02 * area,
                "{shape:?} {total} {area}"
            );
        }
    }

    #[test]
    fn rejects_unsupported_sides() {
        assert!(render(&square_scene(), 0).is_err());
        assert!(render(&square_scene(), 5000).is_err());
        assert!(render(&square_scene(), 64).is_ok());
    }
}
