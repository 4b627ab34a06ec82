//! Shape classification by template matching.
//!
//! An object's coverage map is compared with an ideal rendering of each shape
//! having the same area and centroid. Generated images have soft edges, so
//! each template is also tried softened by one and two `[1, 2, 1] / 4` blur
//! passes; the shape of the best (shape, softness) pair wins. The score is
//! the intersection over union of coverage, 1 for a perfect match.

use crate::render::pixel_coverage;
use crate::scene::Shape;
use crate::segment::Coverage;

/// Blur passes tried on each template.
const SOFTNESS: [u32; 3] = [0, 1, 2];
/// Margin around the window so blurred templates keep their mass.
const PAD: u32 = 3;

/// The best-matching shape for `coverage`, whose area is `area` pixels and
/// centroid `(cx, cy)` in image pixels, and its intersection over union.
pub fn classify_shape(coverage: &Coverage, area: f64, (cx, cy): (f64, f64)) -> (Shape, f64) {
    let mut best = (Shape::Circle, f64::NEG_INFINITY);
    for &shape in Shape::ALL {
        let mut grid = Grid::template(coverage, shape, area, (cx, cy));
        for passes in 0..=SOFTNESS[SOFTNESS.len() - 1] {
            if passes > 0 {
                grid = grid.blurred();
            }
            if SOFTNESS.contains(&passes) {
                let score = grid.iou(coverage, area);
                if score > best.1 {
                    best = (shape, score);
                }
            }
        }
    }
    best
}

/// A template on the coverage window enlarged by [`PAD`] on every side.
struct Grid {
    width: usize,
    height: usize,
    values: Vec<f64>,
}

impl Grid {
    /// The ideal coverage of `shape` with the given area and centroid.
    fn template(coverage: &Coverage, shape: Shape, area: f64, (cx, cy): (f64, f64)) -> Self {
        let (width, height) = (
            (coverage.width + 2 * PAD) as usize,
            (coverage.height + 2 * PAD) as usize,
        );
        // Local pixel (0, 0) is image pixel (x0 - PAD, y0 - PAD).
        let ox = f64::from(coverage.x0) - f64::from(PAD);
        let oy = f64::from(coverage.y0) - f64::from(PAD);
        let size = (area / shape.fill()).sqrt();
        let mut values = Vec::with_capacity(width * height);
        for y in 0..height as u32 {
            for x in 0..width as u32 {
                values.push(pixel_coverage(shape, cx - ox, cy - oy, size, x, y));
            }
        }
        Self {
            width,
            height,
            values,
        }
    }

    /// One separable `[1, 2, 1] / 4` pass (zero outside the grid).
    fn blurred(&self) -> Self {
        let (w, h) = (self.width, self.height);
        let at = |v: &[f64], x: isize, y: isize| {
            if x < 0 || y < 0 || x >= w as isize || y >= h as isize {
                0.0
            } else {
                v[y as usize * w + x as usize]
            }
        };
        let mut rows = vec![0.0; w * h];
        let mut out = vec![0.0; w * h];
        for y in 0..h as isize {
            for x in 0..w as isize {
                let v = &self.values;
                rows[y as usize * w + x as usize] =
                    (at(v, x - 1, y) + 2.0 * at(v, x, y) + at(v, x + 1, y)) / 4.0;
            }
        }
        for y in 0..h as isize {
            for x in 0..w as isize {
                out[y as usize * w + x as usize] =
                    (at(&rows, x, y - 1) + 2.0 * at(&rows, x, y) + at(&rows, x, y + 1)) / 4.0;
            }
        }
        Self {
            width: w,
            height: h,
            values: out,
        }
    }

    /// Intersection over union with `coverage`; template mass outside the
    /// coverage window counts towards the union only.
    fn iou(&self, coverage: &Coverage, area: f64) -> f64 {
        let (mut inter, mut union, mut inside) = (0.0, 0.0, 0.0);
        for (i, &v) in coverage.values.iter().enumerate() {
            let (x, y) = (i % coverage.width as usize, i / coverage.width as usize);
            let t = self.values[(y + PAD as usize) * self.width + x + PAD as usize];
            inter += v.min(t);
            union += v.max(t);
            inside += t;
        }
        let total: f64 = self.values.iter().sum();
        union += (total.max(area) - inside).max(0.0);
        if union > 0.0 {
            inter / union
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coverage_of(shape: Shape, size: f64, blur_passes: u32) -> (Coverage, f64, (f64, f64)) {
        let window = Coverage {
            x0: 0,
            y0: 0,
            width: 24,
            height: 24,
            values: Vec::new(),
        };
        let mut grid = Grid::template(
            &window,
            shape,
            shape.fill() * size * size,
            (12.3 + 3.0, 11.6 + 3.0),
        );
        for _ in 0..blur_passes {
            grid = grid.blurred();
        }
        // Crop the padded grid back to a 24x24 window at (3, 3).
        let values = (0..24)
            .flat_map(|y| (0..24).map(move |x| (x, y)))
            .map(|(x, y)| grid.values[(y + PAD as usize) * grid.width + x + PAD as usize])
            .collect();
        let cov = Coverage {
            x0: 3,
            y0: 3,
            width: 24,
            height: 24,
            values,
        };
        let area = cov.area();
        let c = cov.centroid();
        (cov, area, c)
    }

    #[test]
    fn recognises_sharp_and_soft_shapes() {
        for &shape in Shape::ALL {
            for size in [7.0, 10.0, 13.0] {
                for passes in [0, 1, 2] {
                    let (cov, area, c) = coverage_of(shape, size, passes);
                    let (found, score) = classify_shape(&cov, area, c);
                    assert_eq!(found, shape, "{shape:?} {size} {passes}: {score}");
                }
            }
        }
    }
}
