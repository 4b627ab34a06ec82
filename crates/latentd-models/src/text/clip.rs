//! The CLIP text transformer (transformers `CLIPTextModel`), returning the
//! `last_hidden_state` Stable Diffusion conditions on.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{embedding, Embedding, VarBuilder};

use crate::nn::Pointwise;

use super::config::{ClipTextConfig, HiddenAct};
use super::token_ids::check_token_ids;
use crate::nn::ops::{layer_norm, LayerNorm};
use crate::{Error, Result};

/// CLIP's text encoder: token + position embeddings, pre-norm transformer layers with a
/// causal mask, final layer norm.
#[derive(Debug, Clone)]
pub struct ClipTextModel {
    token_embedding: Embedding,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    vocab_size: usize,
    hidden_size: usize,
}

impl ClipTextModel {
    /// `vb` is at the text encoder's root: weights `text_model.embeddings.*`,
    /// `text_model.encoder.layers.{i}.*`, `text_model.final_layer_norm.*` as transformers 4
    /// saves them, or the same names without `text_model.` as transformers 5 does.
    pub fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        cfg.validate().map_err(|(key, message)| {
            Error::InvalidArgument(format!("CLIP text config `{key}`: {message}"))
        })?;
        let vb = if vb.contains_tensor("text_model.embeddings.token_embedding.weight") {
            vb.pp("text_model")
        } else {
            vb
        };
        let embeddings = vb.pp("embeddings");
        let token_embedding = embedding(
            cfg.vocab_size,
            cfg.hidden_size,
            embeddings.pp("token_embedding"),
        )?;
        let position_embedding = embeddings
            .pp("position_embedding")
            .get((cfg.max_position_embeddings, cfg.hidden_size), "weight")?;
        let layers_vb = vb.pp("encoder").pp("layers");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::new(layers_vb.pp(i), cfg, i))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = layer_norm(
            cfg.hidden_size,
            cfg.layer_norm_eps,
            vb.pp("final_layer_norm"),
        )?;
        Ok(Self {
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            vocab_size: cfg.vocab_size,
            hidden_size: cfg.hidden_size,
        })
    }

    /// `input_ids` `[B, T]` (U32, every id below `vocab_size`, `T` at most
    /// `max_position_embeddings`) to `last_hidden_state` `[B, T, hidden]`.
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let seq_len = self.check_input(input_ids)?;
        let positions = self.position_embedding.narrow(0, 0, seq_len)?;
        let mut xs = self
            .token_embedding
            .forward(input_ids)?
            .broadcast_add(&positions)?;
        let mask = causal_mask(seq_len, xs.dtype(), xs.device())?;
        for layer in &self.layers {
            xs = layer.forward(&xs, &mask)?;
        }
        Ok(self.final_layer_norm.forward(&xs)?)
    }

    /// Width of the returned hidden states (the UNet's cross-attention dimension).
    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// The context length the position table allows.
    pub fn max_position_embeddings(&self) -> usize {
        self.position_embedding.dims()[0]
    }

    /// Checks shape, dtype and ranges; returns the sequence length.
    fn check_input(&self, input_ids: &Tensor) -> Result<usize> {
        check_token_ids(
            input_ids,
            self.max_position_embeddings(),
            self.vocab_size,
            "the text encoder",
        )
    }
}

/// `[T, T]`: 0 on and below the diagonal, -inf above (a token sees only its past).
fn causal_mask(seq_len: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..seq_len)
        .flat_map(|i| (0..seq_len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(values, (seq_len, seq_len), device)?.to_dtype(dtype)?)
}

/// One pre-norm transformer layer: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Debug, Clone)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: Attention,
    layer_norm2: LayerNorm,
    mlp: Mlp,
    span: tracing::Span,
}

impl EncoderLayer {
    fn new(vb: VarBuilder, cfg: &ClipTextConfig, index: usize) -> Result<Self> {
        Ok(Self {
            layer_norm1: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("layer_norm1"))?,
            self_attn: Attention::new(vb.pp("self_attn"), cfg)?,
            layer_norm2: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("layer_norm2"))?,
            mlp: Mlp::new(vb.pp("mlp"), cfg)?,
            span: tracing::trace_span!("clip_text_layer", index),
        })
    }

    fn forward(&self, xs: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let attn = self
            .self_attn
            .forward(&self.layer_norm1.forward(xs)?, mask)?;
        let xs = (xs + attn)?;
        let mlp = self.mlp.forward(&self.layer_norm2.forward(&xs)?)?;
        Ok((xs + mlp)?)
    }
}

/// Multi-head self-attention with biases on all four projections.
#[derive(Debug, Clone)]
struct Attention {
    q_proj: Pointwise,
    k_proj: Pointwise,
    v_proj: Pointwise,
    out_proj: Pointwise,
    num_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        let size = cfg.hidden_size;
        Ok(Self {
            q_proj: Pointwise::new(vb.pp("q_proj"), size, size, true)?,
            k_proj: Pointwise::new(vb.pp("k_proj"), size, size, true)?,
            v_proj: Pointwise::new(vb.pp("v_proj"), size, size, true)?,
            out_proj: Pointwise::new(vb.pp("out_proj"), size, size, true)?,
            num_heads: cfg.num_attention_heads,
            head_dim: size / cfg.num_attention_heads,
        })
    }

    fn forward(&self, xs: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (batch, seq_len, hidden) = xs.dims3()?;
        let heads = |proj: &Pointwise| -> Result<Tensor> {
            Ok(proj
                .tokens(xs)?
                .reshape((batch, seq_len, self.num_heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let (q, k, v) = (
            heads(&self.q_proj)?,
            heads(&self.k_proj)?,
            heads(&self.v_proj)?,
        );
        let scale = (self.head_dim as f64).powf(-0.5);
        let weights = (crate::nn::blas::matmul(&q, &k.t()?)? * scale)?.broadcast_add(mask)?;
        let weights = crate::nn::ops::softmax_last_dim(&weights)?;
        let out = crate::nn::blas::matmul(&weights, &v)?
            .transpose(1, 2)?
            .reshape((batch, seq_len, hidden))?;
        self.out_proj.tokens(&out)
    }
}

/// `fc2(act(fc1(x)))`.
#[derive(Debug, Clone)]
struct Mlp {
    fc1: Pointwise,
    fc2: Pointwise,
    act: HiddenAct,
}

impl Mlp {
    fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        Ok(Self {
            fc1: Pointwise::new(vb.pp("fc1"), cfg.hidden_size, cfg.intermediate_size, true)?,
            fc2: Pointwise::new(vb.pp("fc2"), cfg.intermediate_size, cfg.hidden_size, true)?,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = self.fc1.tokens(xs)?;
        let xs = match self.act {
            HiddenAct::QuickGelu => crate::nn::activations::quick_gelu(&xs)?,
            HiddenAct::Gelu => xs.gelu_erf()?,
        };
        self.fc2.tokens(&xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> (ClipTextModel, ClipTextConfig) {
        let cfg = ClipTextConfig {
            vocab_size: 10,
            hidden_size: 8,
            intermediate_size: 12,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            max_position_embeddings: 6,
            ..ClipTextConfig::default()
        };
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        (ClipTextModel::new(vb, &cfg).unwrap(), cfg)
    }

    fn ids(values: &[u32], shape: (usize, usize)) -> Tensor {
        Tensor::from_slice(values, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn returns_hidden_states_per_token() {
        let (model, _) = tiny();
        let out = model.forward(&ids(&[1, 2, 3, 4, 5, 9], (2, 3))).unwrap();
        assert_eq!(out.dims(), [2, 3, 8]);
    }

    #[test]
    fn rejects_bad_inputs_without_panicking() {
        let (model, _) = tiny();
        let bad = [
            ids(&[1, 10], (1, 2)),
            ids(&[0; 7], (1, 7)),
            ids(&[], (1, 0)),
            Tensor::zeros((1, 2), DType::I64, &Device::Cpu).unwrap(),
            Tensor::zeros(3, DType::U32, &Device::Cpu).unwrap(),
        ];
        for input in bad {
            let err = model.forward(&input).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        }
    }

    #[test]
    fn can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ClipTextModel>();
    }

    #[test]
    fn rejects_inconsistent_config() {
        let cfg = ClipTextConfig {
            hidden_size: 10,
            num_attention_heads: 4,
            ..ClipTextConfig::default()
        };
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        assert!(ClipTextModel::new(vb, &cfg).is_err());
    }

    #[test]
    fn causal_mask_hides_the_future() {
        let mask = causal_mask(3, DType::F32, &Device::Cpu).unwrap();
        let rows: Vec<Vec<f32>> = mask.to_vec2().unwrap();
        assert_eq!(rows[0][1], f32::NEG_INFINITY);
        assert_eq!(rows[1][0], 0.0);
        assert_eq!(rows[2][2], 0.0);
    }
}
