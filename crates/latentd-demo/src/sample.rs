//! Random scenes from a seed, and the fixed train / held-out split.
//!
//! Every decision draws integers from [`Rng`], so a seed gives the same scene
//! on every platform. Layouts obey the invariants the analyser relies on:
//! objects lie inside the image with a margin, a stated region contains the
//! centroid away from the region's borders, and two objects are separated by a
//! gap along their relation's axis, which dominates the other axis twofold.

use serde::{Deserialize, Serialize};

use crate::caption::caption;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::scene::{
    Background, Colour, Content, Object, Point, Region, Relation, Scene, Shape, Size, SIDE,
};

/// Minimum distance from an object's bounding box to the image border.
pub const EDGE_PAD: u32 = 15;
/// Minimum distance from a stated region's centroid to the region's borders.
pub const REGION_MARGIN: u32 = 35;
/// Minimum gap between two objects' bounding boxes along the relation's axis.
pub const PAIR_GAP: u32 = 80;

/// How often each optional part of a caption is stated (percentages, 0-100).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplerConfig {
    /// Share of scenes with two objects.
    pub two_objects: u8,
    /// Share of objects whose size the caption names.
    pub size_stated: u8,
    /// Share of one-object scenes whose region the caption names.
    pub position_stated: u8,
    /// Share of scenes whose background the caption names.
    pub background_stated: u8,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            two_objects: 50,
            size_stated: 40,
            position_stated: 50,
            background_stated: 40,
        }
    }
}

/// Draws a random scene.
pub fn sample_scene(rng: &mut Rng, cfg: &SamplerConfig) -> Scene {
    let background = pick(rng, Background::ALL, Background::Black);
    let background_stated = rng.percent(cfg.background_stated);
    let content = if rng.percent(cfg.two_objects) {
        sample_two(rng, cfg)
    } else {
        sample_one(rng, cfg)
    };
    Scene {
        background,
        background_stated,
        content,
    }
}

/// Draws scene `index` of the dataset named by `seed`, independently of every
/// other index (see [`Rng::for_item`]).
pub fn sample_indexed(seed: u64, index: u64, cfg: &SamplerConfig) -> Scene {
    sample_scene(&mut Rng::for_item(seed, index), cfg)
}

fn pick<T: Copy>(rng: &mut Rng, items: &[T], fallback: T) -> T {
    rng.choose(items).copied().unwrap_or(fallback)
}

/// Colour, shape and size of one object, placed at the image centre.
fn sample_object(rng: &mut Rng, cfg: &SamplerConfig) -> Object {
    Object {
        shape: pick(rng, Shape::ALL, Shape::Circle),
        colour: pick(rng, Colour::ALL, Colour::Red),
        size: pick(rng, Size::ALL, Size::Medium),
        centre: Point {
            x: SIDE / 2,
            y: SIDE / 2,
        },
        size_stated: rng.percent(cfg.size_stated),
    }
}

/// An object's bounding-box extents from its centroid in scene units,
/// `[left, right, up, down]`, rounded up.
fn extents(object: &Object) -> [u32; 4] {
    let s = f64::from(object.size.milli());
    object.shape.extents().map(|e| (e * s).ceil() as u32)
}

/// Centroid coordinates keeping extents `lo` / `hi` inside the image.
fn inside(lo: u32, hi: u32) -> (u32, u32) {
    (EDGE_PAD + lo, SIDE.saturating_sub(EDGE_PAD + hi))
}

fn sample_one(rng: &mut Rng, cfg: &SamplerConfig) -> Content {
    let mut object = sample_object(rng, cfg);
    let position_stated = rng.percent(cfg.position_stated);
    let [l, r, u, d] = extents(&object);
    let (x_range, y_range) = (inside(l, r), inside(u, d));
    let (x_range, y_range) = if position_stated {
        let (column, row) = pick(rng, Region::ALL, Region::Center).cell();
        (core(column, x_range), core(row, y_range))
    } else {
        (x_range, y_range)
    };
    object.centre = Point {
        x: rng.range(x_range.0, x_range.1),
        y: rng.range(y_range.0, y_range.1),
    };
    Content::One {
        object,
        position_stated,
    }
}

/// The part of grid cell `k` (of three) at least [`REGION_MARGIN`] from its
/// borders, intersected with `allowed`. The constants make this non-empty
/// for every shape and size (checked by a test); should it ever be empty the
/// allowed range's nearest end is used.
fn core(k: u32, allowed: (u32, u32)) -> (u32, u32) {
    let lo = (k * SIDE).div_ceil(3) + REGION_MARGIN;
    let hi = ((k + 1) * SIDE / 3).saturating_sub(REGION_MARGIN);
    let (lo, hi) = (lo.max(allowed.0), hi.min(allowed.1));
    if lo <= hi {
        (lo, hi)
    } else {
        let v = lo.min(allowed.1);
        (v, v)
    }
}

fn sample_two(rng: &mut Rng, cfg: &SamplerConfig) -> Content {
    let mut first = sample_object(rng, cfg);
    let mut second = sample_object(rng, cfg);
    // Two objects that look alike would make the caption ambiguous.
    while second.colour == first.colour && second.shape == first.shape {
        second.colour = pick(rng, Colour::ALL, Colour::Red);
    }
    let relation = pick(rng, Relation::ALL, Relation::LeftOf);
    // Lay out along the relation's axis with `lead` before `trail`.
    let (lead, trail) = match relation {
        Relation::LeftOf | Relation::Above => (first, second),
        Relation::RightOf | Relation::Below => (second, first),
    };
    let horizontal = matches!(relation, Relation::LeftOf | Relation::RightOf);
    // Index pairs into extents: (before, after) along the axis and across it.
    let (along, across) = if horizontal {
        ((0, 1), (2, 3))
    } else {
        ((2, 3), (0, 1))
    };
    let (el, et) = (extents(&lead), extents(&trail));
    let span = el[along.0] + el[along.1] + PAIR_GAP + et[along.0] + et[along.1];
    let slack = (SIDE - 2 * EDGE_PAD).saturating_sub(span);
    let (a, b) = (rng.range(0, slack), rng.range(0, slack));
    let (t1, t2) = (a.min(b), a.max(b));
    let lead_along = EDGE_PAD + el[along.0] + t1;
    let trail_along = lead_along + el[along.1] + PAIR_GAP + et[along.0] + (t2 - t1);
    let (lead_across, trail_across) =
        across_positions(rng, el, et, across, trail_along - lead_along);
    let place = |along_v: u32, across_v: u32| {
        if horizontal {
            Point {
                x: along_v,
                y: across_v,
            }
        } else {
            Point {
                x: across_v,
                y: along_v,
            }
        }
    };
    let (lead_centre, trail_centre) = (
        place(lead_along, lead_across),
        place(trail_along, trail_across),
    );
    match relation {
        Relation::LeftOf | Relation::Above => {
            first.centre = lead_centre;
            second.centre = trail_centre;
        }
        Relation::RightOf | Relation::Below => {
            second.centre = lead_centre;
            first.centre = trail_centre;
        }
    }
    Content::Two {
        first,
        relation,
        second,
    }
}

/// Cross-axis centroids for a pair `distance` apart along the axis, at most
/// half that distance apart across it, both inside the image.
fn across_positions(
    rng: &mut Rng,
    el: [u32; 4],
    et: [u32; 4],
    across: (usize, usize),
    distance: u32,
) -> (u32, u32) {
    let (lead_lo, lead_hi) = inside(el[across.0], el[across.1]);
    let (trail_lo, trail_hi) = inside(et[across.0], et[across.1]);
    let reach = distance / 2;
    for _ in 0..64 {
        let l = rng.range(lead_lo, lead_hi);
        let lo = trail_lo.max(l.saturating_sub(reach));
        let hi = trail_hi.min(l + reach);
        if lo <= hi {
            return (l, rng.range(lo, hi));
        }
    }
    // Both ranges contain the image centre for every shape and size.
    (SIDE / 2, SIDE / 2)
}

/// Which side of the fixed train / held-out split a caption belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Captions the demo model may be trained on.
    Train,
    /// Captions reserved for evaluation, never trained on.
    HeldOut,
}

/// Share of captions, in per mille, that are held out.
pub const HELD_OUT_PER_MILLE: u64 = 100;

/// The split of a canonical caption: held out when the 64-bit FNV-1a hash of
/// its UTF-8 bytes, modulo 1000, is below [`HELD_OUT_PER_MILLE`] (10%).
///
/// The rule is on the caption, not the image, so a held-out caption is never
/// seen in training with any seed, and the split is stable across versions as
/// long as the canonical caption text is. Pass captions written by
/// [`caption`] or [`crate::caption::describe`]; other spellings hash differently.
pub fn split_of(caption: &str) -> Split {
    let mut hash: u64 = 0xCBF2_9CE4_8422_2325;
    for byte in caption.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
    }
    if hash % 1000 < HELD_OUT_PER_MILLE {
        Split::HeldOut
    } else {
        Split::Train
    }
}

/// Draws scenes until one's caption is in `split`; errors after 10,000
/// draws (only possible with a config whose few captions all fall outside it).
pub fn sample_split(rng: &mut Rng, cfg: &SamplerConfig, split: Split) -> Result<Scene> {
    const ATTEMPTS: u32 = 10_000;
    for _ in 0..ATTEMPTS {
        let scene = sample_scene(rng, cfg);
        if split_of(&caption(&scene)) == split {
            return Ok(scene);
        }
    }
    Err(Error::SplitExhausted {
        attempts: ATTEMPTS,
        split,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_region_core_is_reachable_by_every_shape_and_size() {
        for &shape in Shape::ALL {
            for &size in Size::ALL {
                let object = Object {
                    shape,
                    colour: Colour::Red,
                    size,
                    centre: Point { x: 0, y: 0 },
                    size_stated: false,
                };
                let [l, r, u, d] = extents(&object);
                for k in 0..3 {
                    for (lo, hi) in [inside(l, r), inside(u, d)] {
                        let unclipped = ((k * SIDE).div_ceil(3) + REGION_MARGIN).max(lo);
                        assert!(
                            unclipped <= ((k + 1) * SIDE / 3 - REGION_MARGIN).min(hi),
                            "{shape:?} {size:?} {k}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn split_is_fixed_and_near_its_target_share() {
        assert_eq!(split_of("a red circle"), split_of("a red circle"));
        let mut rng = Rng::new(11);
        let cfg = SamplerConfig::default();
        let held = (0..4000)
            .filter(|_| split_of(&caption(&sample_scene(&mut rng, &cfg))) == Split::HeldOut)
            .count();
        assert!((250..=550).contains(&held), "{held}");
    }

    #[test]
    fn sample_split_honours_the_split() {
        let mut rng = Rng::new(5);
        let cfg = SamplerConfig::default();
        for split in [Split::Train, Split::HeldOut] {
            for _ in 0..50 {
                let scene = sample_split(&mut rng, &cfg, split).unwrap();
                assert_eq!(split_of(&caption(&scene)), split);
            }
        }
    }

    #[test]
    fn sample_split_errors_when_no_caption_reaches_the_split() {
        // With nothing optional stated there are only 21 captions ("a red
        // circle", ...): the held-out split is reachable iff one of them is in it.
        let cfg = SamplerConfig {
            two_objects: 0,
            size_stated: 0,
            position_stated: 0,
            background_stated: 0,
        };
        let reachable = Colour::ALL.iter().any(|&colour| {
            Shape::ALL.iter().any(|&shape| {
                let spec = crate::caption::SceneSpec {
                    arrangement: crate::caption::Arrangement::One {
                        object: crate::caption::ObjectSpec {
                            colour,
                            shape,
                            size: None,
                        },
                        position: None,
                    },
                    background: None,
                };
                split_of(&crate::caption::describe(&spec)) == Split::HeldOut
            })
        });
        let result = sample_split(&mut Rng::new(1), &cfg, Split::HeldOut);
        assert_eq!(result.is_ok(), reachable);
    }
}
