//! The analyser: what an image shows, measured with plain image analysis.
//!
//! 1. Background: the per-channel median of the border pixels, named by the
//!    nearest background palette colour.
//! 2. Objects: pixels are unmixed against the background and the palette
//!    (see [`crate::segment`]); 8-connected cores of at least half coverage
//!    form objects, specks below a minimum area are ignored.
//! 3. Colour: the palette colour whose blend line best fits the core's mean.
//! 4. Shape: the coverage map is compared (intersection over union) with an
//!    ideal rendering of each shape having the same area and centroid, sharp
//!    and softened (see [`crate::template`]); the best match wins. Comparing
//!    whole templates, rather than single features such as the bounding-box
//!    fill, keeps this robust to soft edges.
//! 5. Size: the bounding-box side implied by the area and the shape, against
//!    thresholds halfway (geometrically) between the nominal sizes.
//! 6. Position: the grid region holding the coverage-weighted centroid.
//!
//! [`Analysis::judge`] then compares these measurements with what a caption states.

use serde::{Deserialize, Serialize};

use crate::caption::SceneSpec;
use crate::image::RgbImage;
use crate::judge::Verdict;
use crate::scene::{Background, Colour, Region, Shape, Size};
use crate::segment::{border_median, segment};
use crate::template::classify_shape;

/// Tunable thresholds of the analyser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AnalyserConfig {
    /// Blend amount at which a pixel belongs to an object's core.
    pub core_threshold: f64,
    /// Smallest object core, as a fraction of the image area; smaller
    /// components are specks (0.005 is 5 px at 32x32, under a quarter of the
    /// smallest shape).
    pub min_area_fraction: f64,
}

impl Default for AnalyserConfig {
    fn default() -> Self {
        Self {
            core_threshold: 0.5,
            min_area_fraction: 0.005,
        }
    }
}

/// One object found in an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detected {
    /// Its colour.
    pub colour: Colour,
    /// Its best-matching shape.
    pub shape: Shape,
    /// Intersection over union with the ideal `shape` (1 is a perfect match).
    pub shape_score: f64,
    /// Its size class.
    pub size: Size,
    /// Its bounding-box side implied by area and shape, as a fraction of the image side.
    pub side: f64,
    /// Its area in pixels (sum of coverage).
    pub area: f64,
    /// Its centroid as fractions of the image width and height.
    pub centroid: (f64, f64),
    /// The grid region holding the centroid.
    pub region: Region,
}

/// Everything the analyser measured in one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    /// The background palette colour nearest the border median.
    pub background: Background,
    /// The measured background colour (border median).
    pub background_rgb: [u8; 3],
    /// The objects found, largest first.
    pub objects: Vec<Detected>,
}

/// Measures what `img` shows.
pub fn analyse_image(img: &RgbImage, cfg: &AnalyserConfig) -> Analysis {
    let bg = border_median(img);
    let (w, h) = (f64::from(img.width()), f64::from(img.height()));
    let min_pixels = (cfg.min_area_fraction * w * h).ceil().max(1.0) as usize;
    let objects = segment(img, bg, cfg.core_threshold, min_pixels)
        .into_iter()
        .map(|s| {
            let area = s.coverage.area();
            let (cx, cy) = s.coverage.centroid();
            let (shape, shape_score) = classify_shape(&s.coverage, area, (cx, cy));
            let side = (area / shape.fill()).sqrt() / (w * h).sqrt();
            let centroid = (cx / w, cy / h);
            Detected {
                colour: s.colour,
                shape,
                shape_score,
                size: Size::classify(side),
                side,
                area,
                centroid,
                region: Region::of_point(centroid.0, centroid.1),
            }
        })
        .collect();
    Analysis {
        background: nearest_background(bg),
        background_rgb: bg,
        objects,
    }
}

/// Measures `img` with the default configuration and judges it against `spec`.
pub fn analyse(img: &RgbImage, spec: &SceneSpec) -> Verdict {
    analyse_image(img, &AnalyserConfig::default()).judge(spec)
}

fn nearest_background(p: [u8; 3]) -> Background {
    let distance = |b: Background| {
        let q = b.rgb();
        (0..3)
            .map(|k| (i32::from(p[k]) - i32::from(q[k])).pow(2))
            .sum::<i32>()
    };
    Background::ALL
        .iter()
        .copied()
        .min_by_key(|&b| distance(b))
        .unwrap_or(Background::Black)
}
