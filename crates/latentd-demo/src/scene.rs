//! The scene model: what an image shows, in resolution-independent units.
//!
//! Coordinates are in thousandths of the image side ("milli"), `x` to the
//! right and `y` down, so a scene is exactly reproducible from integers and
//! renders the same layout at any size. An object's position is its area
//! centroid; its size is the side of its bounding box.

use serde::{Deserialize, Serialize};

/// One image side in scene units.
pub const SIDE: u32 = 1000;

/// Generates a closed vocabulary enum with its caption words and RGB values.
macro_rules! vocabulary {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = ($word:literal, $rgb:expr)),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in caption-vocabulary order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The word used for this value in captions.
            pub fn word(self) -> &'static str {
                match self { $(Self::$variant => $word),+ }
            }

            /// The value whose caption word is `word`, if any.
            pub fn from_word(word: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.word() == word)
            }

            /// The value's sRGB colour.
            pub fn rgb(self) -> [u8; 3] {
                match self { $(Self::$variant => $rgb),+ }
            }
        }
    };
}

vocabulary! {
    /// A shape's fill colour: saturated hues at least ~100 apart in RGB, and
    /// far from every [`Background`].
    Colour {
        Red = ("red", [215, 30, 40]),
        Orange = ("orange", [245, 130, 10]),
        Yellow = ("yellow", [240, 230, 30]),
        Green = ("green", [40, 170, 60]),
        Cyan = ("cyan", [30, 200, 210]),
        Blue = ("blue", [40, 80, 220]),
        Purple = ("purple", [140, 50, 200]),
    }
}

vocabulary! {
    /// A plain background colour; disjoint from (and far from) every [`Colour`].
    Background {
        Black = ("black", [0, 0, 0]),
        White = ("white", [255, 255, 255]),
        Gray = ("gray", [128, 128, 128]),
    }
}

/// A shape. Squares are axis-aligned and triangles point up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// A disc whose diameter is the size.
    Circle,
    /// An axis-aligned square whose side is the size.
    Square,
    /// An isosceles triangle, apex up, whose base and height are the size.
    Triangle,
}

impl Shape {
    /// Every shape, in caption-vocabulary order.
    pub const ALL: &'static [Self] = &[Self::Circle, Self::Square, Self::Triangle];

    /// The word used for this shape in captions.
    pub fn word(self) -> &'static str {
        match self {
            Self::Circle => "circle",
            Self::Square => "square",
            Self::Triangle => "triangle",
        }
    }

    /// The shape whose caption word is `word`, if any.
    pub fn from_word(word: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.word() == word)
    }

    /// The fraction of its bounding box the shape covers.
    pub fn fill(self) -> f64 {
        match self {
            Self::Circle => std::f64::consts::FRAC_PI_4,
            Self::Square => 1.0,
            Self::Triangle => 0.5,
        }
    }

    /// Distances from the centroid to the bounding box's sides, as fractions
    /// of the size: `[left, right, up, down]`.
    pub fn extents(self) -> [f64; 4] {
        match self {
            Self::Circle | Self::Square => [0.5, 0.5, 0.5, 0.5],
            // The centroid of a triangle lies a third of the height above its base.
            Self::Triangle => [0.5, 0.5, 2.0 / 3.0, 1.0 / 3.0],
        }
    }

    /// Whether point `(x, y)` lies inside this shape with centroid `(cx, cy)`
    /// and size `size`, all in the same units (`y` down).
    pub fn contains(self, cx: f64, cy: f64, size: f64, x: f64, y: f64) -> bool {
        let (dx, dy) = (x - cx, y - cy);
        let half = size / 2.0;
        match self {
            Self::Circle => dx * dx + dy * dy <= half * half,
            Self::Square => dx.abs() <= half && dy.abs() <= half,
            Self::Triangle => {
                let from_apex = dy + size * (2.0 / 3.0);
                from_apex >= 0.0 && from_apex <= size && dx.abs() <= from_apex / 2.0
            }
        }
    }
}

/// A named object size. Every size is named in the grammar ("small",
/// "medium", "large"); a caption that names none leaves the size free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    /// 22% of the image side (7 px at 32x32).
    Small,
    /// 31% of the image side (10 px at 32x32).
    Medium,
    /// 40% of the image side (13 px at 32x32).
    Large,
}

impl Size {
    /// Every size, smallest first.
    pub const ALL: &'static [Self] = &[Self::Small, Self::Medium, Self::Large];

    /// The word used for this size in captions.
    pub fn word(self) -> &'static str {
        match self {
            Self::Small => "small",
            Self::Medium => "medium",
            Self::Large => "large",
        }
    }

    /// The size whose caption word is `word`, if any.
    pub fn from_word(word: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.word() == word)
    }

    /// The bounding-box side in scene units.
    pub fn milli(self) -> u32 {
        match self {
            Self::Small => 220,
            Self::Medium => 310,
            Self::Large => 400,
        }
    }

    /// The size whose nominal side is nearest, on a log scale, to `side`
    /// (a fraction of the image side): the thresholds are geometric means.
    pub fn classify(side: f64) -> Self {
        let nominal = |s: Size| f64::from(s.milli()) / f64::from(SIDE);
        let between = |a: Size, b: Size| (nominal(a) * nominal(b)).sqrt();
        if side < between(Self::Small, Self::Medium) {
            Self::Small
        } else if side < between(Self::Medium, Self::Large) {
            Self::Medium
        } else {
            Self::Large
        }
    }
}

/// One of the nine regions of a 3x3 grid over the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Region {
    /// Left third, top third.
    TopLeft,
    /// Middle third, top third.
    Top,
    /// Right third, top third.
    TopRight,
    /// Left third, middle third.
    Left,
    /// Middle third, middle third.
    Center,
    /// Right third, middle third.
    Right,
    /// Left third, bottom third.
    BottomLeft,
    /// Middle third, bottom third.
    Bottom,
    /// Right third, bottom third.
    BottomRight,
}

impl Region {
    /// Every region, row by row from the top left.
    pub const ALL: &'static [Self] = &[
        Self::TopLeft,
        Self::Top,
        Self::TopRight,
        Self::Left,
        Self::Center,
        Self::Right,
        Self::BottomLeft,
        Self::Bottom,
        Self::BottomRight,
    ];

    /// The region's grid cell as `(column, row)`, each in `0..3`.
    pub fn cell(self) -> (u32, u32) {
        let index = Self::ALL.iter().position(|&r| r == self).unwrap_or(4) as u32;
        (index % 3, index / 3)
    }

    /// The region in grid cell `(column, row)`; indices above 2 are clamped.
    pub fn from_cell(column: u32, row: u32) -> Self {
        Self::ALL[(row.min(2) * 3 + column.min(2)) as usize]
    }

    /// The region containing the point `(x, y)`, given as fractions of the
    /// image width and height (values outside `[0, 1]` are clamped).
    pub fn of_point(x: f64, y: f64) -> Self {
        let third = |v: f64| (v * 3.0).floor().clamp(0.0, 2.0) as u32;
        Self::from_cell(third(x), third(y))
    }

    /// The caption phrase for this region, e.g. "at the top left".
    pub fn phrase(self) -> &'static str {
        match self {
            Self::TopLeft => "at the top left",
            Self::Top => "at the top",
            Self::TopRight => "at the top right",
            Self::Left => "on the left",
            Self::Center => "in the center",
            Self::Right => "on the right",
            Self::BottomLeft => "at the bottom left",
            Self::Bottom => "at the bottom",
            Self::BottomRight => "at the bottom right",
        }
    }
}

/// The spatial relation of a scene's first object to its second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    /// The first object is to the left of the second.
    LeftOf,
    /// The first object is to the right of the second.
    RightOf,
    /// The first object is above the second.
    Above,
    /// The first object is below the second.
    Below,
}

impl Relation {
    /// Every relation.
    pub const ALL: &'static [Self] = &[Self::LeftOf, Self::RightOf, Self::Above, Self::Below];

    /// The caption phrase for this relation, e.g. "left of".
    pub fn phrase(self) -> &'static str {
        match self {
            Self::LeftOf => "left of",
            Self::RightOf => "right of",
            Self::Above => "above",
            Self::Below => "below",
        }
    }

    /// Whether the relation holds when the second object's centroid is at
    /// `(dx, dy)` from the first's (`y` down): the offset must lie along the
    /// relation's axis (that axis dominates) by at least `margin`.
    pub fn holds(self, dx: f64, dy: f64, margin: f64) -> bool {
        let (along, across) = match self {
            Self::LeftOf => (dx, dy),
            Self::RightOf => (-dx, dy),
            Self::Above => (dy, dx),
            Self::Below => (-dy, dx),
        };
        along >= margin && along > across.abs()
    }
}

/// A point in scene units (`x` right, `y` down, `0..=SIDE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Point {
    /// Horizontal position.
    pub x: u32,
    /// Vertical position.
    pub y: u32,
}

/// One concrete object in a scene, and which of its optional attributes the
/// caption states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    /// Its shape.
    pub shape: Shape,
    /// Its fill colour.
    pub colour: Colour,
    /// Its size.
    pub size: Size,
    /// Its area centroid.
    pub centre: Point,
    /// Whether the caption names the size.
    pub size_stated: bool,
}

impl Object {
    /// The bounding box as `[left, top, right, bottom]` in scene units.
    pub fn bounds(&self) -> [f64; 4] {
        let s = f64::from(self.size.milli());
        let [l, r, u, d] = self.shape.extents();
        let (x, y) = (f64::from(self.centre.x), f64::from(self.centre.y));
        [x - l * s, y - u * s, x + r * s, y + d * s]
    }
}

/// What a scene contains: one object, or two in a spatial relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Content {
    /// A single object.
    One {
        /// The object.
        object: Object,
        /// Whether the caption names the object's region.
        position_stated: bool,
    },
    /// Two objects; `relation` says where `first` is relative to `second`.
    Two {
        /// The object the caption names first.
        first: Object,
        /// Where `first` is relative to `second`.
        relation: Relation,
        /// The object the caption names second.
        second: Object,
    },
}

/// A complete scene: background, objects and which attributes the caption states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scene {
    /// The background colour.
    pub background: Background,
    /// Whether the caption names the background.
    pub background_stated: bool,
    /// The objects.
    pub content: Content,
}

impl Scene {
    /// The scene's objects, in caption order.
    pub fn objects(&self) -> Vec<Object> {
        match self.content {
            Content::One { object, .. } => vec![object],
            Content::Two { first, second, .. } => vec![first, second],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn distance(a: [u8; 3], b: [u8; 3]) -> f64 {
        let d: Vec<f64> = (0..3).map(|i| f64::from(a[i]) - f64::from(b[i])).collect();
        (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt()
    }

    #[test]
    fn palette_is_well_separated() {
        for (i, &a) in Colour::ALL.iter().enumerate() {
            for &b in &Colour::ALL[i + 1..] {
                assert!(distance(a.rgb(), b.rgb()) > 95.0, "{a:?} {b:?}");
            }
            for &bg in Background::ALL {
                assert!(distance(a.rgb(), bg.rgb()) > 95.0, "{a:?} {bg:?}");
            }
        }
    }

    #[test]
    fn regions_round_trip_through_cells_and_points() {
        for &r in Region::ALL {
            let (c, row) = r.cell();
            assert_eq!(Region::from_cell(c, row), r);
            let centre = |k: u32| (f64::from(k) + 0.5) / 3.0;
            assert_eq!(Region::of_point(centre(c), centre(row)), r);
        }
        assert_eq!(Region::of_point(1.0, -0.2), Region::TopRight);
    }

    #[test]
    fn sizes_classify_to_themselves() {
        for &s in Size::ALL {
            assert_eq!(Size::classify(f64::from(s.milli()) / 1000.0), s);
        }
    }

    #[test]
    fn relations_need_a_dominant_axis() {
        assert!(Relation::LeftOf.holds(0.3, 0.1, 0.05));
        assert!(!Relation::LeftOf.holds(0.3, 0.4, 0.05));
        assert!(!Relation::LeftOf.holds(0.02, 0.0, 0.05));
        assert!(Relation::Below.holds(0.0, -0.3, 0.05));
        assert!(!Relation::Above.holds(0.0, -0.3, 0.05));
    }

    #[test]
    fn triangle_centroid_matches_its_extents() {
        // Integrate the indicator over a fine grid: the centroid must be at the origin.
        let (mut n, mut sy) = (0.0, 0.0);
        for i in 0..400 {
            for j in 0..400 {
                let (x, y) = (-1.0 + f64::from(i) / 200.0, -1.0 + f64::from(j) / 200.0);
                if Shape::Triangle.contains(0.0, 0.0, 1.0, x, y) {
                    n += 1.0;
                    sy += y;
                }
            }
        }
        assert!((sy / n).abs() < 0.01, "{}", sy / n);
        assert!((n / 40_000.0 - 0.5).abs() < 0.01);
    }
}
