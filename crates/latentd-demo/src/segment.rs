//! Low-level image analysis: background estimation, colour unmixing,
//! connected components and per-object coverage maps.
//!
//! A pixel near an object's edge is a blend of the background `B` and the
//! object colour `C`: `p = B + a (C - B)`. For each palette colour we project
//! `p` onto the line from `B` to `C`; the colour whose line passes closest
//! explains the pixel, and the projection `a` estimates how much of the pixel
//! the object covers. Thresholding `a` gives object cores; the unthresholded
//! `a` gives coverage maps whose sums are sub-pixel accurate areas.

use crate::image::RgbImage;
use crate::scene::Colour;

type Rgb = [f64; 3];

fn rgb(p: [u8; 3]) -> Rgb {
    p.map(f64::from)
}

fn sub(a: Rgb, b: Rgb) -> Rgb {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn dot(a: Rgb, b: Rgb) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// The per-channel median of the image's border pixels.
pub fn border_median(img: &RgbImage) -> [u8; 3] {
    let (w, h) = (img.width(), img.height());
    let mut border: Vec<[u8; 3]> = Vec::with_capacity(2 * (w + h) as usize);
    for x in 0..w {
        border.extend(img.get(x, 0));
        border.extend(img.get(x, h - 1));
    }
    for y in 1..h.saturating_sub(1) {
        border.extend(img.get(0, y));
        border.extend(img.get(w - 1, y));
    }
    [0, 1, 2].map(|k| {
        let mut channel: Vec<u8> = border.iter().map(|p| p[k]).collect();
        channel.sort_unstable();
        channel.get(channel.len() / 2).copied().unwrap_or(0)
    })
}

/// Unmixes `p` against the blend line from `bg` to `colour`: the blend
/// amount clamped to `[0, 1]` and the squared distance from `p` to that point.
pub fn unmix(p: [u8; 3], bg: [u8; 3], colour: Colour) -> (f64, f64) {
    let (p, b) = (rgb(p), rgb(bg));
    let d = sub(rgb(colour.rgb()), b);
    let len2 = dot(d, d).max(1.0);
    let a = (dot(sub(p, b), d) / len2).clamp(0.0, 1.0);
    let r = sub(sub(p, b), d.map(|v| v * a));
    (a, dot(r, r))
}

/// The palette colour that best explains `p` as a blend with `bg`, and its
/// blend amount.
pub fn best_colour(p: [u8; 3], bg: [u8; 3]) -> (Colour, f64) {
    let mut best = (Colour::Red, 0.0, f64::INFINITY);
    for &c in Colour::ALL {
        let (a, r) = unmix(p, bg, c);
        if r < best.2 {
            best = (c, a, r);
        }
    }
    (best.0, best.1)
}

/// A rectangular map of one object's estimated coverage per pixel.
#[derive(Debug, Clone)]
pub struct Coverage {
    /// Left column of the window.
    pub x0: u32,
    /// Top row of the window.
    pub y0: u32,
    /// Window width.
    pub width: u32,
    /// Window height.
    pub height: u32,
    /// Row-major coverage in `[0, 1]`.
    pub values: Vec<f64>,
}

impl Coverage {
    /// The summed coverage: the object's area in pixels.
    pub fn area(&self) -> f64 {
        self.values.iter().sum()
    }

    /// The coverage-weighted centroid in image pixels (pixel centres at +0.5).
    pub fn centroid(&self) -> (f64, f64) {
        let (mut sx, mut sy, mut total) = (0.0, 0.0, 0.0);
        for (i, &v) in self.values.iter().enumerate() {
            let (x, y) = (i as u32 % self.width, i as u32 / self.width);
            sx += v * (f64::from(self.x0 + x) + 0.5);
            sy += v * (f64::from(self.y0 + y) + 0.5);
            total += v;
        }
        if total > 0.0 {
            (sx / total, sy / total)
        } else {
            (f64::from(self.x0), f64::from(self.y0))
        }
    }
}

/// One segmented object: its colour, core size and coverage map.
#[derive(Debug, Clone)]
pub struct Segment {
    /// The palette colour whose blend line best fits the core's mean.
    pub colour: Colour,
    /// Pixels whose blend amount reaches the foreground threshold.
    pub core_pixels: usize,
    /// Coverage of this object's colour around its core.
    pub coverage: Coverage,
}

/// Blend amounts below this are treated as noise in coverage maps.
const NOISE_FLOOR: f64 = 0.08;
/// How far (in pixels) coverage maps reach beyond an object's core.
const REACH: u32 = 2;

/// Segments `img` against background `bg`: cores are 8-connected pixels
/// whose best blend amount is at least `threshold`; cores smaller than
/// `min_pixels` are specks and dropped. Returned largest first.
pub fn segment(img: &RgbImage, bg: [u8; 3], threshold: f64, min_pixels: usize) -> Vec<Segment> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let foreground: Vec<bool> = img
        .pixels()
        .map(|p| best_colour(p, bg).1 >= threshold)
        .collect();
    let mut labels = components(&foreground, w, h);
    let mut cores: Vec<Vec<usize>> = Vec::new();
    for (i, label) in labels.iter().enumerate() {
        if let Some(l) = *label {
            if cores.len() <= l {
                cores.resize(l + 1, Vec::new());
            }
            cores[l].push(i);
        }
    }
    // Drop specks and renumber the remaining cores.
    let kept: Vec<Vec<usize>> = cores
        .into_iter()
        .filter(|c| c.len() >= min_pixels.max(1))
        .collect();
    labels.iter_mut().for_each(|l| *l = None);
    for (k, core) in kept.iter().enumerate() {
        for &i in core {
            labels[i] = Some(k);
        }
    }
    let owners = grow(&labels, w, h, REACH);
    let mut segments: Vec<Segment> = kept
        .iter()
        .enumerate()
        .map(|(k, core)| {
            let mut mean = [0.0; 3];
            for &i in core {
                let (x, y) = ((i % w) as u32, (i / w) as u32);
                let p = img.get(x, y).map(rgb).unwrap_or([0.0; 3]);
                (0..3).for_each(|c| mean[c] += p[c] / core.len() as f64);
            }
            let mean = mean.map(|v| v.round() as u8);
            let colour = Colour::ALL
                .iter()
                .copied()
                .min_by(|&a, &b| unmix(mean, bg, a).1.total_cmp(&unmix(mean, bg, b).1))
                .unwrap_or(Colour::Red);
            Segment {
                colour,
                core_pixels: core.len(),
                coverage: coverage(img, bg, colour, &owners, k),
            }
        })
        .collect();
    segments.sort_by_key(|s| std::cmp::Reverse(s.core_pixels));
    segments
}

/// Labels 8-connected `true` pixels, in raster order of first appearance.
fn components(mask: &[bool], w: usize, h: usize) -> Vec<Option<usize>> {
    let mut labels = vec![None; mask.len()];
    let mut next = 0;
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || labels[start].is_some() {
            continue;
        }
        labels[start] = Some(next);
        stack.push(start);
        while let Some(i) = stack.pop() {
            for j in neighbours(i, w, h) {
                if mask[j] && labels[j].is_none() {
                    labels[j] = Some(next);
                    stack.push(j);
                }
            }
        }
        next += 1;
    }
    labels
}

/// The 8-neighbourhood of pixel `i` in a `w` x `h` grid.
fn neighbours(i: usize, w: usize, h: usize) -> impl Iterator<Item = usize> {
    let (x, y) = ((i % w) as i64, (i / w) as i64);
    (-1i64..=1)
        .flat_map(move |dy| (-1i64..=1).map(move |dx| (x + dx, y + dy)))
        .filter(move |&(nx, ny)| {
            (nx, ny) != (x, y) && nx >= 0 && ny >= 0 && nx < w as i64 && ny < h as i64
        })
        .map(move |(nx, ny)| ny as usize * w + nx as usize)
}

/// Extends labels `steps` times to unlabelled 8-neighbours (the smallest
/// neighbouring label wins), so each pixel near a core belongs to one object.
fn grow(labels: &[Option<usize>], w: usize, h: usize, steps: u32) -> Vec<Option<usize>> {
    let mut current = labels.to_vec();
    for _ in 0..steps {
        let previous = current.clone();
        for (i, label) in current.iter_mut().enumerate() {
            if label.is_none() {
                *label = neighbours(i, w, h).filter_map(|j| previous[j]).min();
            }
        }
    }
    current
}

/// The coverage map of object `k` with colour `colour`: the blend amount of
/// every pixel it owns (below [`NOISE_FLOOR`] counts as zero).
fn coverage(
    img: &RgbImage,
    bg: [u8; 3],
    colour: Colour,
    owners: &[Option<usize>],
    k: usize,
) -> Coverage {
    let w = img.width() as usize;
    let owned: Vec<usize> = (0..owners.len())
        .filter(|&i| owners[i] == Some(k))
        .collect();
    let xs = owned.iter().map(|&i| (i % w) as u32);
    let ys = owned.iter().map(|&i| (i / w) as u32);
    let (x0, x1) = (xs.clone().min().unwrap_or(0), xs.max().unwrap_or(0));
    let (y0, y1) = (ys.clone().min().unwrap_or(0), ys.max().unwrap_or(0));
    let (width, height) = (x1 - x0 + 1, y1 - y0 + 1);
    let mut values = vec![0.0; (width * height) as usize];
    for &i in &owned {
        let (x, y) = ((i % w) as u32, (i / w) as u32);
        let a = img.get(x, y).map(|p| unmix(p, bg, colour).0).unwrap_or(0.0);
        values[((y - y0) * width + (x - x0)) as usize] = if a < NOISE_FLOOR { 0.0 } else { a };
    }
    Coverage {
        x0,
        y0,
        width,
        height,
        values,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scene::Background;

    #[test]
    fn unmixing_recovers_blend_amounts() {
        let bg = Background::White.rgb();
        let c = Colour::Blue.rgb();
        let p = [0, 1, 2].map(|k| ((f64::from(bg[k]) * 0.7 + f64::from(c[k]) * 0.3).round()) as u8);
        let (colour, a) = best_colour(p, bg);
        assert_eq!(colour, Colour::Blue);
        assert!((a - 0.3).abs() < 0.01, "{a}");
    }

    #[test]
    fn border_median_ignores_a_minority() {
        let mut img = RgbImage::filled(16, 16, [128, 128, 128]).unwrap();
        for x in 0..10 {
            img.set(x, 0, [255, 0, 0]);
        }
        assert_eq!(border_median(&img), [128, 128, 128]);
    }

    #[test]
    fn separates_components_and_drops_specks() {
        let bg = Background::Black.rgb();
        let mut img = RgbImage::filled(20, 20, bg).unwrap();
        for y in 2..8 {
            for x in 2..8 {
                img.set(x, y, Colour::Red.rgb());
                img.set(x + 10, y + 10, Colour::Cyan.rgb());
            }
        }
        img.set(15, 3, Colour::Green.rgb());
        let segments = segment(&img, bg, 0.5, 4);
        assert_eq!(segments.len(), 2);
        let colours: Vec<Colour> = segments.iter().map(|s| s.colour).collect();
        assert!(colours.contains(&Colour::Red) && colours.contains(&Colour::Cyan));
        for s in &segments {
            assert!((s.coverage.area() - 36.0).abs() < 1e-9);
        }
    }
}
