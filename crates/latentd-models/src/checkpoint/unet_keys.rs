//! The UNet's CompVis names (`model.diffusion_model.*`, the `openaimodel.UNetModel` of
//! the original repository) and their diffusers `UNet2DConditionModel` names.
//!
//! CompVis numbers its blocks flatly: `input_blocks.0` is `conv_in`, then per level
//! `layers` entries of (resnet `.0`, transformer `.1`) and one downsampler `.0.op`
//! (but the last level); `middle_block.{0,1,2}` are resnet, transformer, resnet;
//! `output_blocks` has `layers + 1` entries per level, deepest first, the last of each
//! holding the upsampler (`.1.conv`, or `.2.conv` after a transformer).

use super::keymap::{renames, KeyMap, Leaf, Leaves};
use crate::unet::UNet2DConditionConfig;
use crate::{Error, Result};

/// The file prefix of the UNet's tensors.
pub(crate) const PREFIX: &str = "model.diffusion_model.";

/// A resnet's leaves: `in_layers` (norm, SiLU, conv), `emb_layers` (SiLU, linear),
/// `out_layers` (norm, SiLU, dropout, conv), `skip_connection`.
const RESNET: &[Leaf] = renames![
    "in_layers.0." => "norm1.",
    "in_layers.2." => "conv1.",
    "emb_layers.1." => "time_emb_proj.",
    "out_layers.0." => "norm2.",
    "out_layers.3." => "conv2.",
    "skip_connection." => "conv_shortcut.",
];

/// The key map of a UNet with this configuration (transformer blocks keep their names).
pub(crate) fn unet_keys(cfg: &UNet2DConditionConfig) -> Result<KeyMap> {
    let n = cfg.block_out_channels.len();
    let layers = cfg.layers_per_block.expand(n).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "layers_per_block {:?} does not have one value per block ({n})",
            cfg.layers_per_block
        ))
    })?;
    let attends = |kind: &String| kind.starts_with("CrossAttn");
    let down_attn: Vec<bool> = cfg.down_block_types.iter().map(attends).collect();
    let up_attn: Vec<bool> = cfg.up_block_types.iter().map(attends).collect();
    if down_attn.len() != n || up_attn.len() != n {
        return Err(Error::InvalidArgument(format!(
            "{} down and {} up block types for {n} levels",
            down_attn.len(),
            up_attn.len()
        )));
    }

    let mut map = KeyMap::new("UNet", PREFIX);
    map.rule(
        "time_embed.0.",
        "time_embedding.linear_1.",
        Leaves::Verbatim,
    );
    map.rule(
        "time_embed.2.",
        "time_embedding.linear_2.",
        Leaves::Verbatim,
    );
    map.rule("input_blocks.0.0.", "conv_in.", Leaves::Verbatim);
    map.rule("out.0.", "conv_norm_out.", Leaves::Verbatim);
    map.rule("out.2.", "conv_out.", Leaves::Verbatim);
    if cfg.mid_block_type.is_some() {
        map.rule(
            "middle_block.0.",
            "mid_block.resnets.0.",
            Leaves::Table(RESNET),
        );
        map.rule(
            "middle_block.1.",
            "mid_block.attentions.0.",
            Leaves::Verbatim,
        );
        map.rule(
            "middle_block.2.",
            "mid_block.resnets.1.",
            Leaves::Table(RESNET),
        );
    }
    let mut i = 1;
    for b in 0..n {
        for j in 0..layers[b] {
            let block = format!("down_blocks.{b}");
            map.rule(
                format!("input_blocks.{i}.0."),
                format!("{block}.resnets.{j}."),
                Leaves::Table(RESNET),
            );
            if down_attn[b] {
                map.rule(
                    format!("input_blocks.{i}.1."),
                    format!("{block}.attentions.{j}."),
                    Leaves::Verbatim,
                );
            }
            i += 1;
        }
        if b + 1 < n {
            map.rule(
                format!("input_blocks.{i}.0.op."),
                format!("down_blocks.{b}.downsamplers.0.conv."),
                Leaves::Verbatim,
            );
            i += 1;
        }
    }
    let mut i = 0;
    for b in 0..n {
        let last = layers[n - 1 - b];
        for j in 0..=last {
            let block = format!("up_blocks.{b}");
            map.rule(
                format!("output_blocks.{i}.0."),
                format!("{block}.resnets.{j}."),
                Leaves::Table(RESNET),
            );
            if up_attn[b] {
                map.rule(
                    format!("output_blocks.{i}.1."),
                    format!("{block}.attentions.{j}."),
                    Leaves::Verbatim,
                );
            }
            if j == last && b + 1 < n {
                let index = if up_attn[b] { 2 } else { 1 };
                map.rule(
                    format!("output_blocks.{i}.{index}.conv."),
                    format!("{block}.upsamplers.0.conv."),
                    Leaves::Verbatim,
                );
            }
            i += 1;
        }
    }
    Ok(map)
}
