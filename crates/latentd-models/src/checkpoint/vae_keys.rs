//! The autoencoder's CompVis names (`first_stage_model.*`, `ldm.modules.diffusionmodules
//! .model.Encoder/Decoder`) and their diffusers `AutoencoderKL` names.
//!
//! CompVis numbers the decoder's levels from the output side (`decoder.up.0` is the
//! last diffusers up block), and its mid-block attention's q/k/v/proj_out are 1x1
//! convolutions where diffusers has linear layers.

use super::keymap::{renames, KeyMap, Leaf, Leaves, Transform};
use crate::vae::AutoencoderKLConfig;

/// The file prefix of the autoencoder's tensors.
pub(crate) const PREFIX: &str = "first_stage_model.";

/// A resnet's leaves (`nin_shortcut` is diffusers' `conv_shortcut`).
const RESNET: &[Leaf] = renames![
    "norm1." => "norm1.",
    "conv1." => "conv1.",
    "norm2." => "norm2.",
    "conv2." => "conv2.",
    "nin_shortcut." => "conv_shortcut.",
];

/// A leaf of the table below.
const fn leaf(from: &'static str, to: &'static [(&'static str, Transform)]) -> Leaf {
    Leaf { from, to }
}

/// The mid-block self-attention: group norm and four 1x1 convolutions.
const ATTENTION: &[Leaf] = &[
    leaf("norm.", &[("group_norm.", Transform::Same)]),
    leaf("q.weight", &[("to_q.weight", Transform::ConvToLinear)]),
    leaf("q.bias", &[("to_q.bias", Transform::Same)]),
    leaf("k.weight", &[("to_k.weight", Transform::ConvToLinear)]),
    leaf("k.bias", &[("to_k.bias", Transform::Same)]),
    leaf("v.weight", &[("to_v.weight", Transform::ConvToLinear)]),
    leaf("v.bias", &[("to_v.bias", Transform::Same)]),
    leaf(
        "proj_out.weight",
        &[("to_out.0.weight", Transform::ConvToLinear)],
    ),
    leaf("proj_out.bias", &[("to_out.0.bias", Transform::Same)]),
];

/// The key map of an autoencoder with this configuration.
pub(crate) fn vae_keys(cfg: &AutoencoderKLConfig) -> KeyMap {
    let n = cfg.block_out_channels.len();
    let layers = cfg.layers_per_block;
    let mut map = KeyMap::new("VAE", PREFIX);
    map.rule("quant_conv.", "quant_conv.", Leaves::Verbatim);
    map.rule("post_quant_conv.", "post_quant_conv.", Leaves::Verbatim);
    for part in ["encoder", "decoder"] {
        map.rule(
            format!("{part}.conv_in."),
            format!("{part}.conv_in."),
            Leaves::Verbatim,
        );
        map.rule(
            format!("{part}.conv_out."),
            format!("{part}.conv_out."),
            Leaves::Verbatim,
        );
        let norm_out = format!("{part}.conv_norm_out.");
        map.rule(format!("{part}.norm_out."), norm_out, Leaves::Verbatim);
        for (i, name) in ["block_1", "block_2"].iter().enumerate() {
            let to = format!("{part}.mid_block.resnets.{i}.");
            map.rule(format!("{part}.mid.{name}."), to, Leaves::Table(RESNET));
        }
        if cfg.mid_block_add_attention {
            let to = format!("{part}.mid_block.attentions.0.");
            map.rule(format!("{part}.mid.attn_1."), to, Leaves::Table(ATTENTION));
        }
    }
    for i in 0..n {
        for j in 0..layers {
            let to = format!("encoder.down_blocks.{i}.resnets.{j}.");
            map.rule(
                format!("encoder.down.{i}.block.{j}."),
                to,
                Leaves::Table(RESNET),
            );
        }
        if i + 1 < n {
            let to = format!("encoder.down_blocks.{i}.downsamplers.0.conv.");
            map.rule(
                format!("encoder.down.{i}.downsample.conv."),
                to,
                Leaves::Verbatim,
            );
        }
    }
    for i in 0..n {
        let level = n - 1 - i;
        for j in 0..=layers {
            let to = format!("decoder.up_blocks.{i}.resnets.{j}.");
            map.rule(
                format!("decoder.up.{level}.block.{j}."),
                to,
                Leaves::Table(RESNET),
            );
        }
        if i + 1 < n {
            let to = format!("decoder.up_blocks.{i}.upsamplers.0.conv.");
            map.rule(
                format!("decoder.up.{level}.upsample.conv."),
                to,
                Leaves::Verbatim,
            );
        }
    }
    map
}
