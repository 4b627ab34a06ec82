//! Attention layers: diffusers' `Attention` (as used by SD), `FeedForward` (GEGLU),
//! `BasicTransformerBlock`, `Transformer2DModel` and the autoencoders' mid-block
//! self-attention.
//!
//! Scores and softmax are always computed in `f32` (see `attend`), so `upcast_attention` holds
//! whatever the weights' dtype; the query scale `1/sqrt(head_dim)` is folded into
//! the query projection at load time, and the projections are fused (`qkv` for
//! self-attention, `kv` for cross-attention) so each input is read once.

use candle_core::{Tensor, D};
use candle_nn::{Module, VarBuilder};

use super::attend::attend;
use super::ops::{layer_norm, LayerNorm};
use super::{group_norm, GroupNorm, Pointwise};
use crate::{Error, Result};

/// Weight names of one attention layer.
#[derive(Debug, Clone, Copy)]
pub struct AttentionNames {
    /// Query projection, e.g. `to_q`.
    pub q: &'static str,
    /// Key projection, e.g. `to_k`.
    pub k: &'static str,
    /// Value projection, e.g. `to_v`.
    pub v: &'static str,
    /// Output projection, e.g. `to_out.0`.
    pub out: &'static str,
}

impl AttentionNames {
    /// The current diffusers names.
    pub const DIFFUSERS: Self = Self {
        q: "to_q",
        k: "to_k",
        v: "to_v",
        out: "to_out.0",
    };
    /// The names of diffusers' old `AttentionBlock` (before 0.14).
    pub const LEGACY: Self = Self {
        q: "query",
        k: "key",
        v: "value",
        out: "proj_attn",
    };
}

/// Sizes of one [`Attention`] layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionConfig {
    /// Width of the input tokens (and of the output).
    pub query_dim: usize,
    /// Width of the context tokens for cross-attention; `None` for self-attention.
    pub context_dim: Option<usize>,
    /// Number of heads.
    pub heads: usize,
    /// Width of each head.
    pub head_dim: usize,
    /// Whether the query/key/value projections have a bias.
    pub qkv_bias: bool,
}

#[derive(Debug, Clone)]
enum Projections {
    /// Queries, keys and values of the input in one product: `[q | k | v]`.
    SelfAttention { qkv: Pointwise },
    /// Queries of the input; keys and values of the context: `[k | v]`.
    CrossAttention {
        q: Pointwise,
        kv: Pointwise,
        context_dim: usize,
    },
}

/// Multi-head scaled dot-product attention with input and output projections.
#[derive(Debug, Clone)]
pub struct Attention {
    projections: Projections,
    to_out: Pointwise,
    heads: usize,
    head_dim: usize,
    span: tracing::Span,
}

impl Attention {
    /// Loads an attention layer with the diffusers weight names.
    pub fn new(vb: VarBuilder, cfg: &AttentionConfig) -> Result<Self> {
        Self::with_names(vb, cfg, AttentionNames::DIFFUSERS)
    }

    /// Loads an attention layer whose weights use `names`.
    pub fn with_names(
        vb: VarBuilder,
        cfg: &AttentionConfig,
        names: AttentionNames,
    ) -> Result<Self> {
        let inner = cfg.heads * cfg.head_dim;
        let kv_dim = cfg.context_dim.unwrap_or(cfg.query_dim);
        let q = Pointwise::new(vb.pp(names.q), cfg.query_dim, inner, cfg.qkv_bias)?;
        let k = Pointwise::new(vb.pp(names.k), kv_dim, inner, cfg.qkv_bias)?;
        let v = Pointwise::new(vb.pp(names.v), kv_dim, inner, cfg.qkv_bias)?;
        let scale = 1.0 / (cfg.head_dim as f64).sqrt();
        let q = Pointwise::from_parts(
            (q.weight() * scale)?,
            q.bias().map(|b| b * scale).transpose()?,
        );
        let projections = match cfg.context_dim {
            None => Projections::SelfAttention {
                qkv: concat(&[&q, &k, &v])?,
            },
            Some(context_dim) => Projections::CrossAttention {
                q,
                kv: concat(&[&k, &v])?,
                context_dim,
            },
        };
        Ok(Self {
            projections,
            to_out: Pointwise::new(vb.pp(names.out), inner, cfg.query_dim, true)?,
            heads: cfg.heads,
            head_dim: cfg.head_dim,
            span: tracing::trace_span!("attention"),
        })
    }

    /// `xs` `[B, N, query_dim]`, `context` `[B, T, context_dim]` (cross-attention
    /// only; ignored by self-attention) -> `[B, N, query_dim]`.
    pub fn forward(&self, xs: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let _enter = self.span.enter();
        let inner = self.heads * self.head_dim;
        let (q, k, v) = match &self.projections {
            Projections::SelfAttention { qkv } => {
                let qkv = qkv.tokens(xs)?;
                (
                    qkv.narrow(2, 0, inner)?,
                    qkv.narrow(2, inner, inner)?,
                    qkv.narrow(2, 2 * inner, inner)?,
                )
            }
            Projections::CrossAttention { q, kv, context_dim } => {
                let context = context.ok_or_else(|| {
                    Error::InvalidArgument("cross-attention needs a context".into())
                })?;
                let width = context.dim(D::Minus1)?;
                if width != *context_dim {
                    return Err(Error::InvalidArgument(format!(
                        "context has {width} features per token, the model expects {context_dim}"
                    )));
                }
                let kv = kv.tokens(context)?;
                (
                    q.tokens(xs)?,
                    kv.narrow(2, 0, inner)?,
                    kv.narrow(2, inner, inner)?,
                )
            }
        };
        let hs = attend(&q, &k, &v, self.heads, self.head_dim)?;
        self.to_out.tokens(&hs)
    }
}

/// Stacks projections along their output dimension.
fn concat(parts: &[&Pointwise]) -> Result<Pointwise> {
    let weights: Vec<&Tensor> = parts.iter().map(|p| p.weight()).collect();
    let biases: Option<Vec<&Tensor>> = parts.iter().map(|p| p.bias()).collect();
    let bias = match biases {
        Some(b) => Some(Tensor::cat(&b, 0)?),
        None => None,
    };
    Ok(Pointwise::from_parts(Tensor::cat(&weights, 0)?, bias))
}

/// `net.0` (GEGLU: a projection to twice the inner width, `a * gelu(b)`) then `net.2`.
#[derive(Debug, Clone)]
pub struct FeedForward {
    proj_in: Pointwise,
    proj_out: Pointwise,
    inner: usize,
    span: tracing::Span,
}

impl FeedForward {
    /// Loads a GEGLU feed-forward of width `dim` with a `mult * dim` inner width.
    pub fn new(vb: VarBuilder, dim: usize, mult: usize) -> Result<Self> {
        let inner = dim * mult;
        Ok(Self {
            proj_in: Pointwise::new(vb.pp("net.0.proj"), dim, 2 * inner, true)?,
            proj_out: Pointwise::new(vb.pp("net.2"), inner, dim, true)?,
            inner,
            span: tracing::trace_span!("feed-forward"),
        })
    }

    /// `[B, N, dim]` -> `[B, N, dim]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let hs = self.proj_in.tokens_geglu(xs, self.inner)?;
        self.proj_out.tokens(&hs)
    }
}

/// Sizes of one [`BasicTransformerBlock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransformerBlockConfig {
    /// Token width (`heads * head_dim`).
    pub dim: usize,
    /// Attention heads.
    pub heads: usize,
    /// Width of each head.
    pub head_dim: usize,
    /// Width of the cross-attention context.
    pub context_dim: usize,
}

/// Self-attention, cross-attention and a GEGLU feed-forward, each pre-normed
/// (`norm1..3`, LayerNorm eps 1e-5) and residual.
#[derive(Debug, Clone)]
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
    span: tracing::Span,
}

impl BasicTransformerBlock {
    /// Loads the block's weights from `vb`.
    pub fn new(vb: VarBuilder, cfg: &TransformerBlockConfig) -> Result<Self> {
        let attention = |context_dim| AttentionConfig {
            query_dim: cfg.dim,
            context_dim,
            heads: cfg.heads,
            head_dim: cfg.head_dim,
            qkv_bias: false,
        };
        Ok(Self {
            norm1: layer_norm(cfg.dim, 1e-5, vb.pp("norm1"))?,
            attn1: Attention::new(vb.pp("attn1"), &attention(None))?,
            norm2: layer_norm(cfg.dim, 1e-5, vb.pp("norm2"))?,
            attn2: Attention::new(vb.pp("attn2"), &attention(Some(cfg.context_dim)))?,
            norm3: layer_norm(cfg.dim, 1e-5, vb.pp("norm3"))?,
            ff: FeedForward::new(vb.pp("ff"), cfg.dim, 4)?,
            span: tracing::trace_span!("transformer-block"),
        })
    }

    /// `xs` `[B, N, dim]`, `context` `[B, T, context_dim]` -> `[B, N, dim]`.
    pub fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let xs = (self.attn1.forward(&self.norm1.forward(xs)?, None)? + xs)?;
        let xs = (self
            .attn2
            .forward(&self.norm2.forward(&xs)?, Some(context))?
            + xs)?;
        Ok((self.ff.forward(&self.norm3.forward(&xs)?)? + xs)?)
    }
}

/// Sizes of one [`Transformer2DModel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transformer2DConfig {
    /// Channels of the feature map.
    pub in_channels: usize,
    /// Attention heads.
    pub heads: usize,
    /// Width of each head.
    pub head_dim: usize,
    /// Number of stacked [`BasicTransformerBlock`]s.
    pub layers: usize,
    /// Width of the cross-attention context.
    pub context_dim: usize,
    /// Groups of the input group norm (eps 1e-6).
    pub norm_groups: usize,
    /// `proj_in` / `proj_out` are `Linear` (SD 2.x) rather than 1x1 convolutions.
    /// Both compute the same map; the flag only selects the weight layout tried
    /// first (the other is accepted too).
    pub use_linear_projection: bool,
}

/// A feature map seen as `H * W` tokens: group norm, `proj_in`, transformer
/// blocks, `proj_out`, plus the input.
#[derive(Debug, Clone)]
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Pointwise,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Pointwise,
    span: tracing::Span,
}

impl Transformer2DModel {
    /// Loads the model's weights from `vb`.
    pub fn new(vb: VarBuilder, cfg: &Transformer2DConfig) -> Result<Self> {
        let inner = cfg.heads * cfg.head_dim;
        let block = TransformerBlockConfig {
            dim: inner,
            heads: cfg.heads,
            head_dim: cfg.head_dim,
            context_dim: cfg.context_dim,
        };
        let projection = |vb, cin, cout| {
            if cfg.use_linear_projection {
                Pointwise::new(vb, cin, cout, true)
            } else {
                Pointwise::new_conv(vb, cin, cout, true)
            }
        };
        let vb_blocks = vb.pp("transformer_blocks");
        let blocks = (0..cfg.layers)
            .map(|i| BasicTransformerBlock::new(vb_blocks.pp(i), &block))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: group_norm(vb.pp("norm"), cfg.norm_groups, cfg.in_channels, 1e-6)?,
            proj_in: projection(vb.pp("proj_in"), cfg.in_channels, inner)?,
            blocks,
            proj_out: projection(vb.pp("proj_out"), inner, cfg.in_channels)?,
            span: tracing::trace_span!("transformer-2d"),
        })
    }

    /// `xs` `[B, C, H, W]`, `context` `[B, T, context_dim]` -> `[B, C, H, W]`.
    pub fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let (b, c, h, w) = xs.dims4()?;
        let hs = self.norm.forward(xs)?.reshape((b, c, h * w))?;
        let mut tokens = self.proj_in.channels_to_tokens(&hs)?;
        for block in &self.blocks {
            tokens = block.forward(&tokens, context)?;
        }
        let hs = self.proj_out.tokens_to_channels(&tokens)?;
        Ok((hs.reshape((b, c, h, w))? + xs)?)
    }
}

/// The autoencoders' mid-block self-attention over `H * W` positions: group
/// norm, attention with biased projections, plus the input.
#[derive(Debug, Clone)]
pub struct SpatialSelfAttention {
    group_norm: GroupNorm,
    attention: Attention,
    span: tracing::Span,
}

impl SpatialSelfAttention {
    /// Loads `group_norm` and the projections, accepting both the current
    /// (`to_q`, ..., `to_out.0`) and the legacy (`query`, ..., `proj_attn`) names.
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        heads: usize,
        norm_groups: usize,
        eps: f64,
    ) -> Result<Self> {
        let names = if !vb.contains_tensor("to_q.weight") && vb.contains_tensor("query.weight") {
            AttentionNames::LEGACY
        } else {
            AttentionNames::DIFFUSERS
        };
        let cfg = AttentionConfig {
            query_dim: channels,
            context_dim: None,
            heads,
            head_dim: channels / heads.max(1),
            qkv_bias: true,
        };
        Ok(Self {
            group_norm: group_norm(vb.pp("group_norm"), norm_groups, channels, eps)?,
            attention: Attention::with_names(vb, &cfg, names)?,
            span: tracing::trace_span!("spatial-self-attention"),
        })
    }

    /// `[B, C, H, W]` -> `[B, C, H, W]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let (b, c, h, w) = xs.dims4()?;
        let tokens = self
            .group_norm
            .forward(xs)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?;
        let hs = self.attention.forward(&tokens, None)?;
        let hs = hs.transpose(1, 2)?.reshape((b, c, h, w))?;
        Ok((hs + xs)?)
    }
}
