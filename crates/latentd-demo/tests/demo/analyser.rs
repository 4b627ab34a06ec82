//! The analyser on rendered scenes: accuracy, robustness and rejection of wrong captions.

use latentd_demo::perturb::{add_noise, blur};
use latentd_demo::{
    analyse_image, caption, parse, render, AnalyserConfig, Arrangement, Background, Colour,
    ObjectSpec, Region, Relation, RgbImage, Rng, SceneSpec, Shape, Size, Verdict,
};

use crate::scenes;

fn verdict(img: &RgbImage, spec: &SceneSpec) -> Verdict {
    analyse_image(img, &AnalyserConfig::default()).judge(spec)
}

/// A clean render: the identity degradation.
fn clean(_: u64, img: RgbImage) -> RgbImage {
    img
}

/// Mild generator-like damage: one blur pass (sigma 0.7 px) and noise of sigma 8.
fn mild(i: u64, img: RgbImage) -> RgbImage {
    add_noise(&blur(&img, 1), &mut Rng::new(i), 8.0)
}

/// Share of the first `count` scenes whose render at `side`, passed through
/// `degrade`, fully matches the parsed caption.
fn match_rate(count: u64, side: u32, degrade: fn(u64, RgbImage) -> RgbImage) -> f64 {
    let mut ok = 0;
    let mut failures = Vec::new();
    for (i, scene) in scenes(count).enumerate() {
        let img = degrade(i as u64, render(&scene, side).unwrap());
        let text = caption(&scene);
        let v = verdict(&img, &parse(&text).unwrap());
        if v.matches_all() {
            ok += 1;
        } else if failures.len() < 5 {
            failures.push(format!("{i}: {text} -> {v:?}"));
        }
    }
    let rate = f64::from(ok) / count as f64;
    println!("{side}x{side}: {ok}/{count} = {rate:.4} match; first failures {failures:#?}");
    rate
}

#[test]
fn clean_renders_match_their_captions_at_32() {
    assert!(match_rate(2000, 32, clean) >= 0.99);
}

#[test]
fn clean_renders_match_their_captions_at_64() {
    assert!(match_rate(300, 64, clean) >= 0.99);
}

#[test]
fn clean_renders_match_their_captions_at_16_and_128() {
    assert!(match_rate(300, 16, clean) >= 0.99);
    assert!(match_rate(100, 128, clean) >= 0.99);
}

#[test]
fn mildly_blurred_noisy_renders_still_match() {
    assert!(match_rate(1000, 32, mild) >= 0.95);
}

#[test]
fn strongly_blurred_noisy_renders_still_match() {
    // Two blur passes (sigma 1 px) and noise of sigma 12.
    let rate = match_rate(500, 32, |i, img| {
        add_noise(&blur(&img, 2), &mut Rng::new(i), 12.0)
    });
    assert!(rate >= 0.95);
}

#[test]
fn tinted_renders_still_match() {
    // A global colour cast of up to 20 per channel, plus mild damage.
    let rate = match_rate(1000, 32, |i, img| {
        let mut rng = Rng::new(i ^ 0x5EED);
        let cast = [0, 1, 2].map(|_| rng.range(0, 40) as i32 - 20);
        let bytes = img.as_bytes().iter().enumerate();
        let data = bytes
            .map(|(k, &v)| (i32::from(v) + cast[k % 3]).clamp(0, 255) as u8)
            .collect();
        mild(i, RgbImage::new(img.width(), img.height(), data).unwrap())
    });
    assert!(rate >= 0.95);
}

fn next<T: Copy + PartialEq>(all: &[T], v: T, step: u64) -> T {
    let i = all.iter().position(|&x| x == v).unwrap_or(0);
    all[(i + step as usize) % all.len()]
}

/// The spec with its first object changed by `f`, if `f` changed anything.
fn change_first(spec: &SceneSpec, f: impl Fn(&mut ObjectSpec) -> bool) -> Option<SceneSpec> {
    let mut out = *spec;
    let changed = match &mut out.arrangement {
        Arrangement::One { object, .. } => f(object),
        Arrangement::Two { first, .. } => f(first),
    };
    changed.then_some(out)
}

/// A way to make a caption wrong (`None` when it does not apply to this
/// caption), and the verdict attribute that must then be false.
struct Mutation {
    name: &'static str,
    apply: fn(&SceneSpec, u64) -> Option<SceneSpec>,
    attribute: fn(&Verdict) -> Option<bool>,
}

const MUTATIONS: [Mutation; 7] = [
    Mutation {
        name: "colour",
        apply: |s, i| {
            change_first(s, |o| {
                o.colour = next(Colour::ALL, o.colour, 1 + i % 6);
                true
            })
        },
        attribute: |v| v.colour,
    },
    Mutation {
        name: "shape",
        apply: |s, i| {
            change_first(s, |o| {
                o.shape = next(Shape::ALL, o.shape, 1 + i % 2);
                true
            })
        },
        attribute: |v| v.shape,
    },
    Mutation {
        name: "size",
        apply: |s, i| {
            change_first(s, |o| {
                o.size
                    .map(|z| o.size = Some(next(Size::ALL, z, 1 + i % 2)))
                    .is_some()
            })
        },
        attribute: |v| v.size,
    },
    Mutation {
        name: "position",
        apply: |s, i| match s.arrangement {
            Arrangement::One {
                object,
                position: Some(r),
            } => Some(SceneSpec {
                arrangement: Arrangement::One {
                    object,
                    position: Some(next(Region::ALL, r, 1 + i % 8)),
                },
                ..*s
            }),
            _ => None,
        },
        attribute: |v| v.position,
    },
    Mutation {
        name: "relation",
        apply: |s, i| match s.arrangement {
            Arrangement::Two {
                first,
                relation,
                second,
            } => Some(SceneSpec {
                arrangement: Arrangement::Two {
                    first,
                    relation: next(Relation::ALL, relation, 1 + i % 3),
                    second,
                },
                ..*s
            }),
            _ => None,
        },
        attribute: |v| v.relation,
    },
    Mutation {
        name: "background",
        apply: |s, i| {
            s.background.map(|b| SceneSpec {
                background: Some(next(Background::ALL, b, 1 + i % 2)),
                ..*s
            })
        },
        attribute: |v| v.background,
    },
    Mutation {
        name: "count",
        apply: |s, _| {
            let arrangement = match s.arrangement {
                Arrangement::One { object, .. } => Arrangement::Two {
                    first: object,
                    relation: Relation::LeftOf,
                    second: ObjectSpec {
                        colour: next(Colour::ALL, object.colour, 1),
                        ..object
                    },
                },
                Arrangement::Two { first, .. } => Arrangement::One {
                    object: first,
                    position: None,
                },
            };
            Some(SceneSpec { arrangement, ..*s })
        },
        attribute: |v| v.count,
    },
];

/// For each mutation, the share of wrong captions whose attribute is judged false.
fn rejection_rates(
    count: u64,
    degrade: fn(u64, RgbImage) -> RgbImage,
) -> Vec<(&'static str, usize, f64)> {
    let mut tally = [(0usize, 0usize); MUTATIONS.len()];
    for (i, scene) in scenes(count).enumerate() {
        let analysis = analyse_image(
            &degrade(i as u64, render(&scene, 32).unwrap()),
            &AnalyserConfig::default(),
        );
        for (m, t) in MUTATIONS.iter().zip(tally.iter_mut()) {
            if let Some(wrong) = (m.apply)(&scene.spec(), i as u64) {
                t.0 += 1;
                t.1 += usize::from((m.attribute)(&analysis.judge(&wrong)) == Some(false));
            }
        }
    }
    let rates: Vec<_> = MUTATIONS
        .iter()
        .zip(tally)
        .map(|(m, (tried, rejected))| (m.name, tried, rejected as f64 / tried.max(1) as f64))
        .collect();
    println!("rejection rates (attribute, wrong captions, share rejected): {rates:?}");
    rates
}

#[test]
fn wrong_captions_are_rejected_on_clean_renders() {
    for (name, tried, rate) in rejection_rates(1500, clean) {
        assert!(tried >= 200 && rate >= 0.95, "{name}: {rate} of {tried}");
    }
}

#[test]
fn wrong_captions_are_rejected_on_damaged_renders() {
    for (name, tried, rate) in rejection_rates(1000, mild) {
        assert!(tried >= 100 && rate >= 0.95, "{name}: {rate} of {tried}");
    }
}

#[test]
fn an_empty_image_fails_every_object_attribute() {
    let img = RgbImage::filled(32, 32, Background::Gray.rgb()).unwrap();
    let spec = parse("a large red circle in the center on a gray background").unwrap();
    let v = verdict(&img, &spec);
    assert_eq!(
        [v.count, v.colour, v.shape, v.size, v.position, v.background],
        [
            Some(false),
            Some(false),
            Some(false),
            Some(false),
            Some(false),
            Some(true)
        ]
    );
    assert!(!v.matches_all());
}

#[test]
fn arbitrary_images_are_analysed_without_failing() {
    let mut rng = Rng::new(99);
    for (w, h) in [(16, 16), (40, 24), (64, 64)] {
        let data = (0..w * h * 3).map(|_| rng.below(256) as u8).collect();
        let img = RgbImage::new(w, h, data).unwrap();
        let spec = parse("a red circle left of a blue square").unwrap();
        let v = verdict(&img, &spec);
        assert!(v.count.is_some() && v.relation.is_some() && v.position.is_none());
    }
}
