//! LDM-BERT, the text encoder of the CompVis LDM text-to-image pipeline (diffusers
//! `LDMBertModel`), returning the `last_hidden_state` the UNet conditions on.

use candle_core::{DType, Module, Tensor};
use candle_nn::{embedding, linear, Embedding, Linear, VarBuilder};

use super::ldm_bert_config::{LdmBertActivation, LdmBertConfig};
use super::token_ids::check_token_ids;
use crate::nn::attention::{Attention, AttentionConfig, AttentionNames};
use crate::nn::ops::{layer_norm, LayerNorm};
use crate::{Error, Result};

/// The weight names of `LDMBertAttention`.
const ATTENTION_NAMES: AttentionNames = AttentionNames {
    q: "q_proj",
    k: "k_proj",
    v: "v_proj",
    out: "out_proj",
};

/// LDM-BERT's encoder: token + learned position embeddings, pre-norm transformer layers
/// with bidirectional attention (no mask: the pipeline passes none), final layer norm.
/// `to_logits` (the masked-LM head) is not used for conditioning and is not loaded.
#[derive(Debug, Clone)]
pub struct LdmBertModel {
    embed_tokens: Embedding,
    embed_positions: Tensor,
    layers: Vec<EncoderLayer>,
    layer_norm: LayerNorm,
    vocab_size: usize,
    d_model: usize,
}

impl LdmBertModel {
    /// `vb` is at the model's root: weights `model.embed_tokens.*`, `model.embed_positions.*`,
    /// `model.layers.{i}.*`, `model.layer_norm.*` as diffusers saves `LDMBertModel`, or the
    /// same names without `model.` (an `LDMBertEncoder` saved on its own).
    pub fn new(vb: VarBuilder, cfg: &LdmBertConfig) -> Result<Self> {
        cfg.validate().map_err(|(key, message)| {
            Error::InvalidArgument(format!("LDM-BERT config `{key}`: {message}"))
        })?;
        let vb = if vb.contains_tensor("model.embed_tokens.weight") {
            vb.pp("model")
        } else {
            vb
        };
        let embed_tokens = embedding(cfg.vocab_size, cfg.d_model, vb.pp("embed_tokens"))?;
        let embed_positions = vb
            .pp("embed_positions")
            .get((cfg.max_position_embeddings, cfg.d_model), "weight")?;
        let layers_vb = vb.pp("layers");
        let layers = (0..cfg.encoder_layers)
            .map(|i| EncoderLayer::new(layers_vb.pp(i), cfg, i))
            .collect::<Result<Vec<_>>>()?;
        let layer_norm = layer_norm(cfg.d_model, cfg.layer_norm_eps, vb.pp("layer_norm"))?;
        Ok(Self {
            embed_tokens,
            embed_positions,
            layers,
            layer_norm,
            vocab_size: cfg.vocab_size,
            d_model: cfg.d_model,
        })
    }

    /// `input_ids` `[B, T]` (U32, every id below `vocab_size`, `T` at most
    /// `max_position_embeddings`) to `last_hidden_state` `[B, T, d_model]`: diffusers'
    /// `bert(input_ids)[0]`.
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let seq_len = self.check_input(input_ids)?;
        let positions = self.embed_positions.narrow(0, 0, seq_len)?;
        let mut xs = self
            .embed_tokens
            .forward(input_ids)?
            .broadcast_add(&positions)?;
        for layer in &self.layers {
            xs = layer.forward(&xs)?;
        }
        Ok(self.layer_norm.forward(&xs)?)
    }

    /// Width of the returned hidden states (the UNet's cross-attention dimension).
    pub fn hidden_size(&self) -> usize {
        self.d_model
    }

    /// The longest sequence the position table allows.
    pub fn max_position_embeddings(&self) -> usize {
        self.embed_positions.dims()[0]
    }

    /// Number of token embeddings.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The dtype of the weights (and of the returned hidden states).
    pub fn dtype(&self) -> DType {
        self.embed_positions.dtype()
    }

    /// Checks shape, dtype and ranges; returns the sequence length.
    fn check_input(&self, input_ids: &Tensor) -> Result<usize> {
        check_token_ids(
            input_ids,
            self.max_position_embeddings(),
            self.vocab_size,
            "LDM-BERT",
        )
    }
}

/// `LDMBertEncoderLayer`: `x + attn(ln(x))`, then `x + fc2(act(fc1(ln(x))))`.
#[derive(Debug, Clone)]
struct EncoderLayer {
    self_attn_layer_norm: LayerNorm,
    self_attn: Attention,
    final_layer_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    activation: LdmBertActivation,
    span: tracing::Span,
}

impl EncoderLayer {
    fn new(vb: VarBuilder, cfg: &LdmBertConfig, index: usize) -> Result<Self> {
        let attention = AttentionConfig {
            query_dim: cfg.d_model,
            context_dim: None,
            heads: cfg.encoder_attention_heads,
            head_dim: cfg.head_dim,
            // `LDMBertAttention` has no q/k/v biases; `out_proj` has one.
            qkv_bias: false,
        };
        let eps = cfg.layer_norm_eps;
        Ok(Self {
            self_attn_layer_norm: layer_norm(cfg.d_model, eps, vb.pp("self_attn_layer_norm"))?,
            self_attn: Attention::with_names(vb.pp("self_attn"), &attention, ATTENTION_NAMES)?,
            final_layer_norm: layer_norm(cfg.d_model, eps, vb.pp("final_layer_norm"))?,
            fc1: linear(cfg.d_model, cfg.encoder_ffn_dim, vb.pp("fc1"))?,
            fc2: linear(cfg.encoder_ffn_dim, cfg.d_model, vb.pp("fc2"))?,
            activation: cfg.activation_function,
            span: tracing::trace_span!("ldm_bert_layer", index),
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let attn = self
            .self_attn
            .forward(&self.self_attn_layer_norm.forward(xs)?, None)?;
        let xs = (xs + attn)?;
        let hs = self.fc1.forward(&self.final_layer_norm.forward(&xs)?)?;
        let hs = self.fc2.forward(&self.activation.apply(&hs)?)?;
        Ok((xs + hs)?)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{Device, D};

    use super::*;

    fn tiny_config() -> LdmBertConfig {
        LdmBertConfig {
            vocab_size: 11,
            max_position_embeddings: 6,
            encoder_layers: 2,
            encoder_ffn_dim: 7,
            encoder_attention_heads: 2,
            head_dim: 3,
            d_model: 4,
            ..LdmBertConfig::default()
        }
    }

    /// Deterministic pseudo-random values in [-0.5, 0.5).
    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i + 1) * 7919 + seed * 104_729) % 1000) as f32 / 1000.0 - 0.5)
            .collect()
    }

    /// Random weights under the names diffusers saves, with `prefix`.
    fn weights(cfg: &LdmBertConfig, prefix: &str) -> HashMap<String, Tensor> {
        let (d, inner, ffn) = (cfg.d_model, cfg.inner_dim(), cfg.encoder_ffn_dim);
        let mut shapes: Vec<(String, Vec<usize>)> = vec![
            ("embed_tokens.weight".into(), vec![cfg.vocab_size, d]),
            (
                "embed_positions.weight".into(),
                vec![cfg.max_position_embeddings, d],
            ),
            ("layer_norm.weight".into(), vec![d]),
            ("layer_norm.bias".into(), vec![d]),
        ];
        for i in 0..cfg.encoder_layers {
            let layer = |name: &str, shape: Vec<usize>| (format!("layers.{i}.{name}"), shape);
            shapes.extend([
                layer("self_attn.q_proj.weight", vec![inner, d]),
                layer("self_attn.k_proj.weight", vec![inner, d]),
                layer("self_attn.v_proj.weight", vec![inner, d]),
                layer("self_attn.out_proj.weight", vec![d, inner]),
                layer("self_attn.out_proj.bias", vec![d]),
                layer("self_attn_layer_norm.weight", vec![d]),
                layer("self_attn_layer_norm.bias", vec![d]),
                layer("final_layer_norm.weight", vec![d]),
                layer("final_layer_norm.bias", vec![d]),
                layer("fc1.weight", vec![ffn, d]),
                layer("fc1.bias", vec![ffn]),
                layer("fc2.weight", vec![d, ffn]),
                layer("fc2.bias", vec![d]),
            ]);
        }
        shapes
            .into_iter()
            .enumerate()
            .map(|(seed, (name, shape))| {
                let n = shape.iter().product();
                let tensor = Tensor::from_vec(values(n, seed), shape, &Device::Cpu).unwrap();
                (format!("{prefix}{name}"), tensor)
            })
            .collect()
    }

    fn model(cfg: &LdmBertConfig, prefix: &str) -> LdmBertModel {
        let vb = VarBuilder::from_tensors(weights(cfg, prefix), DType::F32, &Device::Cpu);
        LdmBertModel::new(vb, cfg).unwrap()
    }

    fn ids(values: &[u32], shape: (usize, usize)) -> Tensor {
        Tensor::from_slice(values, shape, &Device::Cpu).unwrap()
    }

    /// `LDMBertModel.forward` written out with plain tensor ops, as a reference.
    fn reference(w: &HashMap<String, Tensor>, cfg: &LdmBertConfig, input: &Tensor) -> Tensor {
        let get = |name: &str| w[&format!("model.{name}")].clone();
        let lin = |x: &Tensor, name: &str, bias: bool| {
            let y = x.broadcast_matmul(&get(&format!("{name}.weight")).t().unwrap());
            let y = y.unwrap();
            if bias {
                y.broadcast_add(&get(&format!("{name}.bias"))).unwrap()
            } else {
                y
            }
        };
        let ln = |x: &Tensor, name: &str| {
            let mean = x.mean_keepdim(D::Minus1).unwrap();
            let centred = x.broadcast_sub(&mean).unwrap();
            let var = centred.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            let normed = centred
                .broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
                .unwrap();
            normed
                .broadcast_mul(&get(&format!("{name}.weight")))
                .unwrap()
                .broadcast_add(&get(&format!("{name}.bias")))
                .unwrap()
        };
        let (b, t) = input.dims2().unwrap();
        let (h, hd) = (cfg.encoder_attention_heads, cfg.head_dim);
        let tokens = get("embed_tokens.weight")
            .index_select(&input.flatten_all().unwrap(), 0)
            .unwrap()
            .reshape((b, t, cfg.d_model))
            .unwrap();
        let pos = get("embed_positions.weight").narrow(0, 0, t).unwrap();
        let mut xs = tokens.broadcast_add(&pos).unwrap();
        for i in 0..cfg.encoder_layers {
            let p = format!("layers.{i}");
            let hs = ln(&xs, &format!("{p}.self_attn_layer_norm"));
            let split = |x: Tensor| {
                x.reshape((b, t, h, hd))
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
                    .contiguous()
                    .unwrap()
            };
            let q = split(
                (lin(&hs, &format!("{p}.self_attn.q_proj"), false) * (hd as f64).powf(-0.5))
                    .unwrap(),
            );
            let k = split(lin(&hs, &format!("{p}.self_attn.k_proj"), false));
            let v = split(lin(&hs, &format!("{p}.self_attn.v_proj"), false));
            let probs =
                candle_nn::ops::softmax(&q.matmul(&k.t().unwrap()).unwrap(), D::Minus1).unwrap();
            let attn = probs
                .matmul(&v)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .reshape((b, t, h * hd))
                .unwrap();
            xs = (xs + lin(&attn, &format!("{p}.self_attn.out_proj"), true)).unwrap();
            let hs = ln(&xs, &format!("{p}.final_layer_norm"));
            let hs = lin(&hs, &format!("{p}.fc1"), true).gelu_erf().unwrap();
            xs = (xs + lin(&hs, &format!("{p}.fc2"), true)).unwrap();
        }
        ln(&xs, "layer_norm")
    }

    #[test]
    fn matches_a_plain_reference_implementation() {
        let cfg = tiny_config();
        let w = weights(&cfg, "model.");
        let vb = VarBuilder::from_tensors(w.clone(), DType::F32, &Device::Cpu);
        let model = LdmBertModel::new(vb, &cfg).unwrap();
        let input = ids(&[2, 5, 7, 3, 0, 0, 2, 10, 3, 0, 0, 0], (2, 6));
        let got = model.forward(&input).unwrap();
        assert_eq!(got.dims(), [2, 6, 4]);
        let want = reference(&w, &cfg, &input);
        let err = crate::pipeline::max_abs_diff(&got, &want).unwrap();
        assert!(err < 1e-5, "{err}");
        // Shorter sequences use the first positions; rows are independent of the batch.
        let short = model.forward(&input.narrow(1, 0, 4).unwrap()).unwrap();
        let want = reference(&w, &cfg, &input.narrow(1, 0, 4).unwrap());
        assert!(crate::pipeline::max_abs_diff(&short, &want).unwrap() < 1e-5);
    }

    #[test]
    fn loads_with_or_without_the_model_prefix() {
        let cfg = tiny_config();
        let input = ids(&[1, 2, 3], (1, 3));
        let prefixed = model(&cfg, "model.").forward(&input).unwrap();
        let bare = model(&cfg, "").forward(&input).unwrap();
        assert_eq!(
            crate::pipeline::max_abs_diff(&prefixed, &bare).unwrap(),
            0.0
        );
    }

    #[test]
    fn missing_weights_are_errors() {
        let cfg = tiny_config();
        let mut w = weights(&cfg, "model.");
        w.remove("model.layers.1.fc2.bias");
        let vb = VarBuilder::from_tensors(w, DType::F32, &Device::Cpu);
        assert!(LdmBertModel::new(vb, &cfg).is_err());
    }

    #[test]
    fn rejects_bad_inputs_without_panicking() {
        let model = model(&tiny_config(), "model.");
        let bad = [
            ids(&[1, 11], (1, 2)),
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
    fn rejects_inconsistent_config() {
        let cfg = LdmBertConfig {
            head_dim: 0,
            ..tiny_config()
        };
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        assert!(LdmBertModel::new(vb, &cfg).is_err());
    }

    #[test]
    fn can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<LdmBertModel>();
    }
}
