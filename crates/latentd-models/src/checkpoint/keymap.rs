//! Renaming one component's CompVis tensor names to diffusers' (and back, to name a
//! missing tensor as the file would): a list of block prefix pairs, each with the leaf
//! renames inside the block.

/// How a file tensor becomes the tensor a module reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transform {
    /// Unchanged.
    Same,
    /// A 1x1 convolution kernel `[o, i, 1, 1]` (or `[o, i, 1]`) read as a linear weight.
    ConvToLinear,
    /// Part `index` of `parts` equal slices along dim 0 (a fused q/k/v projection).
    Part { index: usize, parts: usize },
}

/// One leaf rename inside a block: a CompVis leaf and the diffusers tensors it becomes.
/// A leaf ending in `.` is a prefix (the rest of the name is kept); otherwise it names
/// one tensor exactly.
#[derive(Clone, Copy)]
pub(crate) struct Leaf {
    pub from: &'static str,
    pub to: &'static [(&'static str, Transform)],
}

/// A table of plain [`Leaf`] renames: `"from." => "to."`, ...
macro_rules! renames {
    ($($from:literal => $to:literal),* $(,)?) => {
        &[$($crate::checkpoint::keymap::Leaf {
            from: $from,
            to: &[($to, $crate::checkpoint::keymap::Transform::Same)],
        }),*]
    };
}
pub(crate) use renames;

/// What happens to the names inside a block.
#[derive(Clone, Copy)]
pub(crate) enum Leaves {
    /// Kept as they are.
    Verbatim,
    /// Renamed by a table; a name it does not list is unknown.
    Table(&'static [Leaf]),
    /// Known, and not loaded.
    Drop,
}

struct Rule {
    from: String,
    to: String,
    leaves: Leaves,
}

/// Where one file tensor goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mapped {
    /// To these module tensors.
    To(Vec<(String, Transform)>),
    /// Nowhere: a known tensor loaders ignore.
    Dropped,
    /// No rule knows it.
    Unknown,
}

/// The renames of one component, whose file tensors all start with `prefix`.
pub(crate) struct KeyMap {
    /// The component, for messages (e.g. "UNet").
    pub component: &'static str,
    /// The file prefix of its tensors (e.g. `model.diffusion_model.`).
    pub prefix: &'static str,
    rules: Vec<Rule>,
}

/// `rest` when `name` is `pattern` exactly, or `pattern` is a prefix ending in `.`.
fn strip<'a>(name: &'a str, pattern: &str) -> Option<&'a str> {
    if name == pattern {
        Some("")
    } else if pattern.is_empty() || pattern.ends_with('.') {
        name.strip_prefix(pattern)
    } else {
        None
    }
}

impl KeyMap {
    pub fn new(component: &'static str, prefix: &'static str) -> Self {
        Self {
            component,
            prefix,
            rules: Vec::new(),
        }
    }

    /// Adds a block: file names under `from` become module names under `to`.
    pub fn rule(&mut self, from: impl Into<String>, to: impl Into<String>, leaves: Leaves) {
        self.rules.push(Rule {
            from: from.into(),
            to: to.into(),
            leaves,
        });
    }

    /// Where the file tensor `key` (with the component prefix) goes.
    pub fn forward(&self, key: &str) -> Mapped {
        let Some(key) = key.strip_prefix(self.prefix) else {
            return Mapped::Unknown;
        };
        for rule in &self.rules {
            let Some(rest) = strip(key, &rule.from) else {
                continue;
            };
            return match rule.leaves {
                Leaves::Drop => Mapped::Dropped,
                Leaves::Verbatim => {
                    Mapped::To(vec![(format!("{}{rest}", rule.to), Transform::Same)])
                }
                Leaves::Table(leaves) => leaves
                    .iter()
                    .find_map(|leaf| {
                        let suffix = strip(rest, leaf.from)?;
                        let names = leaf.to.iter().map(|(to, transform)| {
                            (format!("{}{to}{suffix}", rule.to), *transform)
                        });
                        Some(Mapped::To(names.collect()))
                    })
                    .unwrap_or(Mapped::Unknown),
            };
        }
        Mapped::Unknown
    }

    /// The file name (with the component prefix) of the module tensor `name`.
    pub fn reverse(&self, name: &str) -> Option<String> {
        self.rules.iter().find_map(|rule| {
            let rest = strip(name, &rule.to)?;
            let leaf = match rule.leaves {
                Leaves::Drop => return None,
                Leaves::Verbatim => rest.to_string(),
                Leaves::Table(leaves) => leaves.iter().find_map(|leaf| {
                    leaf.to.iter().find_map(|(to, _)| {
                        strip(rest, to).map(|suffix| format!("{}{suffix}", leaf.from))
                    })
                })?,
            };
            Some(format!("{}{}{leaf}", self.prefix, rule.from))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: &[Leaf] = renames!["in_layers.0." => "norm1."];
    const LEAVES: &[Leaf] = &[
        PLAIN[0],
        Leaf {
            from: "qkv",
            to: &[
                ("q", Transform::Part { index: 0, parts: 2 }),
                ("k", Transform::Part { index: 1, parts: 2 }),
            ],
        },
    ];

    fn map() -> KeyMap {
        let mut map = KeyMap::new("test", "m.");
        map.rule("input_blocks.1.0.", "down.0.", Leaves::Table(LEAVES));
        map.rule("input_blocks.1.1.", "attn.0.", Leaves::Verbatim);
        map.rule("pos", "embeddings.position", Leaves::Verbatim);
        map.rule("logit_scale", "", Leaves::Drop);
        map
    }

    #[test]
    fn renames_forward_and_back() {
        let map = map();
        let to = |names: &[(&str, Transform)]| {
            Mapped::To(names.iter().map(|(n, t)| (n.to_string(), *t)).collect())
        };
        let cases = [
            (
                "m.input_blocks.1.0.in_layers.0.weight",
                to(&[("down.0.norm1.weight", Transform::Same)]),
            ),
            (
                "m.input_blocks.1.1.proj_in.bias",
                to(&[("attn.0.proj_in.bias", Transform::Same)]),
            ),
            ("m.pos", to(&[("embeddings.position", Transform::Same)])),
            ("m.logit_scale", Mapped::Dropped),
            // Block boundaries are whole segments: 11 is not 1.
            ("m.input_blocks.11.0.in_layers.0.weight", Mapped::Unknown),
            ("m.input_blocks.1.0.other.weight", Mapped::Unknown),
            ("m.position", Mapped::Unknown),
            ("x.pos", Mapped::Unknown),
        ];
        for (key, want) in cases {
            assert_eq!(map.forward(key), want, "{key}");
            if let Mapped::To(names) = want {
                for (name, _) in names {
                    assert_eq!(map.reverse(&name).as_deref(), Some(key), "{name}");
                }
            }
        }
        assert_eq!(
            map.forward("m.input_blocks.1.0.qkv"),
            to(&[
                ("down.0.q", Transform::Part { index: 0, parts: 2 }),
                ("down.0.k", Transform::Part { index: 1, parts: 2 })
            ])
        );
        assert_eq!(
            map.reverse("down.0.k").as_deref(),
            Some("m.input_blocks.1.0.qkv")
        );
        assert_eq!(map.reverse("nowhere.weight"), None);
    }
}
