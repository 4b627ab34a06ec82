//! Judging an [`Analysis`] against what a caption states.

use serde::{Deserialize, Serialize};

use crate::analyse::{Analysis, Detected};
use crate::caption::{Arrangement, ObjectSpec, SceneSpec};
use crate::scene::Relation;

/// Smallest centroid offset, as a fraction of the image side, for a relation to hold.
pub const RELATION_MARGIN: f64 = 0.05;

/// Per-attribute verdicts: `Some(true)` when the image shows what the caption
/// states, `Some(false)` when it does not, `None` when the caption is silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Verdict {
    /// The image has exactly as many objects as the caption names.
    pub count: Option<bool>,
    /// Every named object is present with its colour.
    pub colour: Option<bool>,
    /// Every named object is present with its shape.
    pub shape: Option<bool>,
    /// Every stated size matches.
    pub size: Option<bool>,
    /// The single object is in the stated region.
    pub position: Option<bool>,
    /// The two objects are in the stated relation.
    pub relation: Option<bool>,
    /// The background has the stated colour.
    pub background: Option<bool>,
}

impl Verdict {
    /// The verdicts in a fixed order with their names.
    pub fn attributes(&self) -> [(&'static str, Option<bool>); 7] {
        [
            ("count", self.count),
            ("colour", self.colour),
            ("shape", self.shape),
            ("size", self.size),
            ("position", self.position),
            ("relation", self.relation),
            ("background", self.background),
        ]
    }

    /// Whether every stated attribute holds.
    pub fn matches_all(&self) -> bool {
        self.attributes().iter().all(|(_, v)| *v != Some(false))
    }
}

/// How many of an object's stated attributes a detection satisfies.
fn agreement(spec: &ObjectSpec, d: &Detected) -> u32 {
    u32::from(spec.colour == d.colour)
        + u32::from(spec.shape == d.shape)
        + u32::from(spec.size.is_some_and(|s| s == d.size))
}

impl Analysis {
    /// Judges this analysis against `spec`.
    ///
    /// Named objects are matched to detected ones by the assignment that
    /// satisfies the most colour, shape and size statements (ties go to the
    /// assignment that satisfies the position or relation, then to the
    /// larger detection); a named object left without a detection fails all
    /// its attributes.
    pub fn judge(&self, spec: &SceneSpec) -> Verdict {
        let wanted = spec.objects();
        let assigned = self.assign(spec);
        let found = |k: usize| {
            assigned
                .get(k)
                .copied()
                .flatten()
                .and_then(|i| self.objects.get(i))
        };
        let every = |f: &dyn Fn(&ObjectSpec, &Detected) -> bool| {
            wanted
                .iter()
                .enumerate()
                .all(|(k, w)| found(k).is_some_and(|d| f(w, d)))
        };
        let any_size = wanted.iter().any(|w| w.size.is_some());
        Verdict {
            count: Some(self.objects.len() == wanted.len()),
            colour: Some(every(&|w, d| w.colour == d.colour)),
            shape: Some(every(&|w, d| w.shape == d.shape)),
            size: any_size.then(|| every(&|w, d| w.size.is_none_or(|s| s == d.size))),
            position: match spec.arrangement {
                Arrangement::One {
                    position: Some(region),
                    ..
                } => Some(found(0).is_some_and(|d| d.region == region)),
                _ => None,
            },
            relation: match spec.arrangement {
                Arrangement::Two { relation, .. } => Some(match (found(0), found(1)) {
                    (Some(a), Some(b)) => relation_holds(relation, a, b),
                    _ => false,
                }),
                Arrangement::One { .. } => None,
            },
            background: spec.background.map(|b| b == self.background),
        }
    }

    /// The detection index assigned to each named object, if any.
    fn assign(&self, spec: &SceneSpec) -> Vec<Option<usize>> {
        let n = self.objects.len();
        // Candidate assignments: any detection or none per named object, never one twice.
        let choices = (0..n).map(Some).chain([None]);
        match spec.arrangement {
            Arrangement::One { object, position } => {
                let mut best = None;
                let mut best_score = (0, false, 0);
                for c in choices {
                    let d = c.and_then(|i| self.objects.get(i));
                    let matches = d.map_or(0, |d| agreement(&object, d));
                    let placed = d.is_some_and(|d| position.is_some_and(|r| r == d.region));
                    let score = (matches, placed, u32::from(d.is_some()));
                    if score > best_score {
                        best_score = score;
                        best = c;
                    }
                }
                vec![best]
            }
            Arrangement::Two {
                first,
                relation,
                second,
            } => {
                let mut best = (None, None);
                let mut best_score = (0, false, 0);
                for a in choices.clone() {
                    for b in choices.clone() {
                        if a.is_some() && a == b {
                            continue;
                        }
                        let da = a.and_then(|i| self.objects.get(i));
                        let db = b.and_then(|i| self.objects.get(i));
                        let matches = da.map_or(0, |d| agreement(&first, d))
                            + db.map_or(0, |d| agreement(&second, d));
                        let related = matches!((da, db), (Some(x), Some(y)) if relation_holds(relation, x, y));
                        let present = u32::from(da.is_some()) + u32::from(db.is_some());
                        let score = (matches, related, present);
                        if score > best_score {
                            best_score = score;
                            best = (a, b);
                        }
                    }
                }
                vec![best.0, best.1]
            }
        }
    }
}

/// Whether `a` is in `relation` to `b`, judged on their centroids.
fn relation_holds(relation: Relation, a: &Detected, b: &Detected) -> bool {
    let (dx, dy) = (b.centroid.0 - a.centroid.0, b.centroid.1 - a.centroid.1);
    relation.holds(dx, dy, RELATION_MARGIN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caption::parse;
    use crate::scene::{Background, Colour, Region, Shape, Size};

    fn detected(colour: Colour, shape: Shape, size: Size, centroid: (f64, f64)) -> Detected {
        Detected {
            colour,
            shape,
            shape_score: 1.0,
            size,
            side: f64::from(size.milli()) / 1000.0,
            area: 100.0,
            centroid,
            region: Region::of_point(centroid.0, centroid.1),
        }
    }

    fn analysis(objects: Vec<Detected>) -> Analysis {
        Analysis {
            background: Background::White,
            background_rgb: Background::White.rgb(),
            objects,
        }
    }

    #[test]
    fn matches_objects_by_description_not_by_order() {
        // The red circle (right) is listed before the blue square (left).
        let a = analysis(vec![
            detected(Colour::Red, Shape::Circle, Size::Large, (0.75, 0.5)),
            detected(Colour::Blue, Shape::Square, Size::Small, (0.25, 0.5)),
        ]);
        let v = a.judge(&parse("a small blue square left of a large red circle").unwrap());
        assert!(v.matches_all(), "{v:?}");
        let v = a.judge(&parse("a small blue square right of a large red circle").unwrap());
        assert_eq!(v.relation, Some(false));
        assert_eq!(
            (v.colour, v.shape, v.size),
            (Some(true), Some(true), Some(true))
        );
    }

    #[test]
    fn reports_only_what_the_caption_states() {
        let a = analysis(vec![detected(
            Colour::Green,
            Shape::Triangle,
            Size::Medium,
            (0.2, 0.8),
        )]);
        let v = a.judge(&parse("a green triangle").unwrap());
        assert_eq!(
            v.attributes().iter().filter(|(_, v)| v.is_some()).count(),
            3
        );
        assert!(v.matches_all());
        let v = a.judge(
            &parse("a large green triangle at the bottom left on a black background").unwrap(),
        );
        assert_eq!(
            (v.size, v.position, v.background),
            (Some(false), Some(true), Some(false))
        );
    }

    #[test]
    fn a_missing_object_fails_and_an_extra_one_fails_the_count() {
        let one = analysis(vec![detected(
            Colour::Red,
            Shape::Circle,
            Size::Large,
            (0.5, 0.5),
        )]);
        let v = one.judge(&parse("a red circle above a blue square").unwrap());
        assert_eq!(
            (v.count, v.colour, v.relation),
            (Some(false), Some(false), Some(false))
        );
        let two = analysis(vec![
            detected(Colour::Red, Shape::Circle, Size::Large, (0.5, 0.3)),
            detected(Colour::Cyan, Shape::Square, Size::Large, (0.5, 0.7)),
        ]);
        let v = two.judge(&parse("a red circle").unwrap());
        assert_eq!(
            (v.count, v.colour, v.shape),
            (Some(false), Some(true), Some(true))
        );
    }
}
