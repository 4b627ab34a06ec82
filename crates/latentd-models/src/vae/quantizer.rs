//! diffusers' `VectorQuantizer`: nearest-neighbour lookup in a learned codebook.

use std::path::PathBuf;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use crate::{Error, Result};

/// Settings of a [`VectorQuantizer`], as diffusers' constructor takes them.
///
/// `beta` and `legacy` only weigh the training loss and are not represented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VectorQuantizerConfig {
    /// Codebook entries (`n_e`).
    pub num_embeddings: usize,
    /// Width of each entry (`vq_embed_dim`).
    pub embed_dim: usize,
    /// Path of an index remapping; only `None` is supported.
    pub remap: Option<String>,
    /// Indices shaped `[B, h, w]` instead of diffusers' default flat `[B * h * w]`.
    pub sane_index_shape: bool,
}

/// Maps each latent cell to its nearest codebook entry (`embedding.weight`,
/// `[num_embeddings, embed_dim]`).
#[derive(Debug, Clone)]
pub struct VectorQuantizer {
    embedding: Tensor,
    num_embeddings: usize,
    embed_dim: usize,
    sane_index_shape: bool,
    span: tracing::Span,
}

impl VectorQuantizer {
    /// Loads `embedding.weight` from `vb`.
    pub fn new(vb: VarBuilder, cfg: &VectorQuantizerConfig) -> Result<Self> {
        let unsupported = |key: &str, message: String| Error::UnsupportedConfig {
            path: PathBuf::from("<vector quantizer>"),
            key: key.into(),
            message,
        };
        if let Some(remap) = &cfg.remap {
            return Err(unsupported(
                "remap",
                format!("{remap:?} (index remapping is not supported)"),
            ));
        }
        for (key, n) in [
            ("num_vq_embeddings", cfg.num_embeddings),
            ("vq_embed_dim", cfg.embed_dim),
        ] {
            if n == 0 || u32::try_from(n).is_err() {
                return Err(unsupported(key, format!("{n} (must be in 1..2^32)")));
            }
        }
        Ok(Self {
            embedding: vb.get((cfg.num_embeddings, cfg.embed_dim), "embedding.weight")?,
            num_embeddings: cfg.num_embeddings,
            embed_dim: cfg.embed_dim,
            sane_index_shape: cfg.sane_index_shape,
            span: tracing::trace_span!("vector-quantizer"),
        })
    }

    /// The codebook, `[num_embeddings, embed_dim]`.
    pub fn codebook(&self) -> &Tensor {
        &self.embedding
    }

    /// Index of the nearest entry of each cell of `latents` `[B, embed_dim, h, w]`
    /// by squared L2 distance (computed in `f32`; ties and all-NaN rows go to the
    /// lowest index, as `torch.argmin`): `u32`, `[B * h * w]` in `(b, y, x)` order,
    /// or `[B, h, w]` with `sane_index_shape`.
    pub fn indices(&self, latents: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let (b, h, w) = self.check_latents(latents)?;
        let cells = latents
            .permute((0, 2, 3, 1))?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let codebook = self
            .embedding
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let indices = nearest_entries(&cells, &codebook, self.embed_dim);
        let indices = Tensor::from_vec(indices, b * h * w, latents.device())?;
        if self.sane_index_shape {
            Ok(indices.reshape((b, h, w))?)
        } else {
            Ok(indices)
        }
    }

    /// `latents` `[B, embed_dim, h, w]` -> `(quantized, indices)`: each cell
    /// replaced by its nearest codebook entry (as `z + (e - z)`, diffusers'
    /// straight-through form, so the values match it bit for bit), and the
    /// [indices](Self::indices) of those entries.
    pub fn quantize(&self, latents: &Tensor) -> Result<(Tensor, Tensor)> {
        let indices = self.indices(latents)?;
        let (b, _, h, w) = latents.dims4()?;
        let entries = self
            .entries(&indices.flatten_all()?, (b, h, w))?
            .to_dtype(latents.dtype())?;
        let quantized = (latents + (entries - latents)?)?;
        Ok((quantized, indices))
    }

    /// The codebook entries at `indices` (any integer dtype, `b * h * w` of them in
    /// `(b, y, x)` order, any shape) as latents `[b, embed_dim, h, w]`: diffusers'
    /// `get_codebook_entry(indices, (b, h, w, embed_dim))`.
    pub fn codebook_entries(
        &self,
        indices: &Tensor,
        shape: (usize, usize, usize),
    ) -> Result<Tensor> {
        let _enter = self.span.enter();
        let (b, h, w) = shape;
        let count = b * h * w;
        if count == 0 || indices.elem_count() != count {
            return Err(Error::InvalidArgument(format!(
                "{:?} indices for a non-empty [{b}, {h}, {w}] latent grid",
                indices.dims()
            )));
        }
        if !indices.dtype().is_int() {
            return Err(Error::InvalidArgument(format!(
                "codebook indices must be integers, got {:?}",
                indices.dtype()
            )));
        }
        let flat = indices.flatten_all()?;
        let host = flat.to_dtype(DType::I64)?.to_vec1::<i64>()?;
        let limit = self.num_embeddings as i64;
        if let Some(bad) = host.iter().find(|&&i| !(0..limit).contains(&i)) {
            return Err(Error::InvalidArgument(format!(
                "codebook index {bad} out of range 0..{limit}"
            )));
        }
        self.entries(&flat.to_dtype(DType::U32)?, shape)
    }

    /// Rows of the codebook at valid `u32` indices `[b * h * w]` -> `[b, D, h, w]`.
    fn entries(&self, indices: &Tensor, (b, h, w): (usize, usize, usize)) -> Result<Tensor> {
        let rows = self.embedding.index_select(indices, 0)?;
        Ok(rows
            .reshape((b, h, w, self.embed_dim))?
            .permute((0, 3, 1, 2))?
            .contiguous()?)
    }

    fn check_latents(&self, latents: &Tensor) -> Result<(usize, usize, usize)> {
        match *latents.dims() {
            [b, c, h, w] if c == self.embed_dim && b * h * w > 0 => Ok((b, h, w)),
            _ => Err(Error::InvalidArgument(format!(
                "latents to quantize must be [B, {}, h, w] with B, h, w >= 1, got {:?}",
                self.embed_dim,
                latents.dims()
            ))),
        }
    }
}

/// Cells handed to one rayon task.
const CELLS_PER_TASK: usize = 256;

/// For each `dim`-wide cell of `cells`, the index of the nearest `dim`-wide row of
/// `codebook` by squared L2 distance; the first of equally near rows wins.
fn nearest_entries(cells: &[f32], codebook: &[f32], dim: usize) -> Vec<u32> {
    let nearest = |cell: &[f32]| -> u32 {
        let mut best = (0u32, f32::NAN);
        for (k, entry) in codebook.chunks_exact(dim).enumerate() {
            let dist: f32 = cell.iter().zip(entry).map(|(a, e)| (a - e) * (a - e)).sum();
            // `k == 0` seeds the search; later rows must be strictly nearer.
            if k == 0 || dist < best.1 {
                best = (k as u32, dist);
            }
        }
        best.0
    };
    cells
        .par_chunks(CELLS_PER_TASK * dim)
        .flat_map_iter(|chunk| chunk.chunks_exact(dim).map(nearest).collect::<Vec<_>>())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarBuilder;
    use std::collections::HashMap;

    /// A 2-D codebook of 4 entries, the last a duplicate of entry 1.
    fn quantizer(sane_index_shape: bool) -> VectorQuantizer {
        let codebook =
            Tensor::new(&[[0f32, 0.], [1., 0.], [0., 2.], [1., 0.]], &Device::Cpu).unwrap();
        let tensors = HashMap::from([("embedding.weight".to_string(), codebook)]);
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let cfg = VectorQuantizerConfig {
            num_embeddings: 4,
            embed_dim: 2,
            remap: None,
            sane_index_shape,
        };
        VectorQuantizer::new(vb, &cfg).unwrap()
    }

    #[test]
    fn nearest_entry_with_ties_to_lowest_index() {
        let q = quantizer(false);
        // Cells (x, y) of a [1, 2, 1, 5] grid: near 0, near 1 (and its duplicate 3),
        // exactly between 0 and 1 (tie -> 0), near 2, and far away along y.
        let xs = [0.1f32, 0.9, 0.5, 0.2, 0.0];
        let ys = [-0.1f32, 0.1, 0.0, 1.7, 50.0];
        let latents = Tensor::new(&[[xs], [ys]], &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 1, 5))
            .unwrap();
        let (quantized, indices) = q.quantize(&latents).unwrap();
        assert_eq!(indices.to_vec1::<u32>().unwrap(), vec![0, 1, 0, 2, 2]);
        let got = quantized.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(got, vec![0., 1., 0., 0., 0., 0., 0., 0., 2., 2.]);
    }

    #[test]
    fn sane_index_shape_and_codebook_entries() {
        let q = quantizer(true);
        let latents = Tensor::new(&[0.9f32, 0.1, 0.0, 1.0, 0.0, 0.0, 2.0, -0.2], &Device::Cpu)
            .unwrap()
            .reshape((2, 2, 1, 2))
            .unwrap();
        let (quantized, indices) = q.quantize(&latents).unwrap();
        assert_eq!(indices.dims(), &[2, 1, 2]);
        assert_eq!(
            indices.flatten_all().unwrap().to_vec1::<u32>().unwrap(),
            vec![1, 0, 2, 0]
        );
        let looked_up = q
            .codebook_entries(&indices.to_dtype(DType::I64).unwrap(), (2, 1, 2))
            .unwrap();
        let diff = (looked_up - quantized)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-6, "{diff}");
    }

    #[test]
    fn bad_indices_and_settings_are_errors() {
        let q = quantizer(false);
        let dev = Device::Cpu;
        let out_of_range = Tensor::new(&[0i64, 4], &dev).unwrap();
        assert!(q.codebook_entries(&out_of_range, (1, 1, 2)).is_err());
        let negative = Tensor::new(&[-1i64, 0], &dev).unwrap();
        assert!(q.codebook_entries(&negative, (1, 1, 2)).is_err());
        let floats = Tensor::new(&[0f32, 1.], &dev).unwrap();
        assert!(q.codebook_entries(&floats, (1, 1, 2)).is_err());
        let wrong_count = Tensor::new(&[0u32, 1, 2], &dev).unwrap();
        assert!(q.codebook_entries(&wrong_count, (1, 1, 2)).is_err());
        let wrong_width = Tensor::zeros((1, 3, 2, 2), DType::F32, &dev).unwrap();
        assert!(q.quantize(&wrong_width).is_err());

        let vb = VarBuilder::zeros(DType::F32, &dev);
        let cfg = VectorQuantizerConfig {
            num_embeddings: 4,
            embed_dim: 2,
            remap: Some("used.npy".into()),
            sane_index_shape: false,
        };
        assert!(matches!(
            VectorQuantizer::new(vb, &cfg),
            Err(Error::UnsupportedConfig { key, .. }) if key == "remap"
        ));
    }
}
