//! The text encoders' CompVis names and their transformers `CLIPTextModel` names.
//!
//! SD 1.x wraps transformers' CLIP (`cond_stage_model.transformer.*`): the names are
//! transformers' own. SD 2.x wraps OpenCLIP ViT-H (`cond_stage_model.model.*`): its
//! attention fuses q/k/v into `in_proj_*`, and the file has one more residual block than
//! the model uses, since SD 2 conditions on the penultimate layer's output.

use super::keymap::{KeyMap, Leaf, Leaves, Transform};

/// The file prefix of SD 1.x's CLIP text encoder.
pub(crate) const CLIP_PREFIX: &str = "cond_stage_model.transformer.";
/// The file prefix of SD 2.x's OpenCLIP text encoder.
pub(crate) const OPEN_CLIP_PREFIX: &str = "cond_stage_model.model.";

/// The two layouts of the text encoder in a CompVis checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextLayout {
    /// transformers' CLIP under `cond_stage_model.transformer.` (SD 1.x).
    Clip,
    /// OpenCLIP under `cond_stage_model.model.` (SD 2.x).
    OpenClip,
}

impl TextLayout {
    /// The file prefix of the text encoder's tensors.
    pub fn prefix(self) -> &'static str {
        match self {
            TextLayout::Clip => CLIP_PREFIX,
            TextLayout::OpenClip => OPEN_CLIP_PREFIX,
        }
    }
}

/// The key map of SD 1.x's CLIP text encoder, in transformers 4's `text_model.*` names.
pub(crate) fn clip_keys() -> KeyMap {
    let mut map = KeyMap::new("text encoder", CLIP_PREFIX);
    // A buffer older transformers saved with the weights.
    for root in ["text_model.", ""] {
        map.rule(format!("{root}embeddings.position_ids"), "", Leaves::Drop);
    }
    map.rule("text_model.", "text_model.", Leaves::Verbatim);
    map.rule("", "text_model.", Leaves::Verbatim);
    map
}

const fn part(index: usize) -> Transform {
    Transform::Part { index, parts: 3 }
}

const fn same(to: &'static str) -> (&'static str, Transform) {
    (to, Transform::Same)
}

/// One OpenCLIP residual block.
const RESBLOCK: &[Leaf] = &[
    Leaf {
        from: "attn.in_proj_weight",
        to: &[
            ("self_attn.q_proj.weight", part(0)),
            ("self_attn.k_proj.weight", part(1)),
            ("self_attn.v_proj.weight", part(2)),
        ],
    },
    Leaf {
        from: "attn.in_proj_bias",
        to: &[
            ("self_attn.q_proj.bias", part(0)),
            ("self_attn.k_proj.bias", part(1)),
            ("self_attn.v_proj.bias", part(2)),
        ],
    },
    Leaf {
        from: "attn.out_proj.",
        to: &[same("self_attn.out_proj.")],
    },
    Leaf {
        from: "ln_1.",
        to: &[same("layer_norm1.")],
    },
    Leaf {
        from: "ln_2.",
        to: &[same("layer_norm2.")],
    },
    Leaf {
        from: "mlp.c_fc.",
        to: &[same("mlp.fc1.")],
    },
    Leaf {
        from: "mlp.c_proj.",
        to: &[same("mlp.fc2.")],
    },
];

/// The key map of SD 2.x's OpenCLIP text encoder for a model of `layers` layers: the
/// block after them (the file's last) and the projection head are dropped.
pub(crate) fn open_clip_keys(layers: usize) -> KeyMap {
    let mut map = KeyMap::new("text encoder", OPEN_CLIP_PREFIX);
    let embeddings = "text_model.embeddings.";
    map.rule(
        "token_embedding.",
        format!("{embeddings}token_embedding."),
        Leaves::Verbatim,
    );
    map.rule(
        "positional_embedding",
        format!("{embeddings}position_embedding.weight"),
        Leaves::Verbatim,
    );
    map.rule(
        "ln_final.",
        "text_model.final_layer_norm.",
        Leaves::Verbatim,
    );
    map.rule("text_projection", "", Leaves::Drop);
    map.rule("logit_scale", "", Leaves::Drop);
    for k in 0..layers {
        let to = format!("text_model.encoder.layers.{k}.");
        map.rule(
            format!("transformer.resblocks.{k}."),
            to,
            Leaves::Table(RESBLOCK),
        );
    }
    map.rule(format!("transformer.resblocks.{layers}."), "", Leaves::Drop);
    map
}
