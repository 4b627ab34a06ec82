//! Softmax attention kernels: one head and one block of queries at a time on the
//! CPU (small score matrices that stay in cache), all heads in one batched product
//! on accelerators. Scores and softmax are always computed in `f32`.

use candle_core::{DType, Tensor};

use crate::Result;

/// Score elements computed at once (8 MiB of `f32`): queries are processed in
/// chunks so the score matrix stays cache- and allocator-friendly.
const MAX_SCORE_ELEMENTS: usize = 1 << 21;

/// Score elements of one fused call on an accelerator (1 GiB of `f32`): above it the
/// queries are split into chunks, each still covering every head and row.
const MAX_FUSED_SCORE_ELEMENTS: usize = 1 << 28;

/// How a device computes attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttentionKernel {
    /// One head and one block of queries at a time (the CPU: small score matrices
    /// that stay in cache, one GEMM per sample).
    Chunked,
    /// All heads and rows in one batched product and softmax (GPUs: a few large
    /// kernels instead of thousands of tiny ones).
    Fused,
}

impl AttentionKernel {
    fn for_device(device: &candle_core::Device) -> Self {
        if device.is_cpu() {
            AttentionKernel::Chunked
        } else {
            AttentionKernel::Fused
        }
    }
}

/// Softmax attention. `q` `[B, N, heads * head_dim]` (already scaled), `k`, `v`
/// `[B, T, heads * head_dim]`, with any uniform batch stride (views into fused
/// projections are fine) -> `[B, N, heads * head_dim]`. The scores and the softmax
/// are computed in `f32` whatever the inputs' dtype.
pub(crate) fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    head_dim: usize,
) -> Result<Tensor> {
    match AttentionKernel::for_device(q.device()) {
        AttentionKernel::Chunked => attend_chunked(q, k, v, heads, head_dim, MAX_SCORE_ELEMENTS),
        AttentionKernel::Fused => attend_fused(q, k, v, heads, MAX_FUSED_SCORE_ELEMENTS),
    }
}

/// All heads at once: split the heads into a batch dimension, one batched product
/// for the scores `[B, heads, N, T]`, one softmax, one product with the values. The
/// queries are cut into chunks only when the scores would pass `max_scores`.
fn attend_fused(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    max_scores: usize,
) -> Result<Tensor> {
    let (b, n, inner) = q.dims3()?;
    let t = k.dim(1)?;
    let head_dim = inner / heads.max(1);
    let dtype = v.dtype();
    // [B, L, heads * d] -> [B, heads, L, d]
    let split = |x: &Tensor, len: usize| -> Result<Tensor> {
        Ok(x.reshape((b, len, heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()?)
    };
    let k = split(&k.contiguous()?, t)?.to_dtype(DType::F32)?;
    let k_t = k.t()?;
    let v = split(&v.contiguous()?, t)?;
    let per_query = b * heads * t;
    let chunk = (max_scores / per_query.max(1)).clamp(1, n.max(1));
    let mut outs = Vec::with_capacity(n.div_ceil(chunk));
    for start in (0..n).step_by(chunk) {
        crate::interrupt::poll()?;
        let len = chunk.min(n - start);
        let q = split(&q.narrow(1, start, len)?.contiguous()?, len)?.to_dtype(DType::F32)?;
        let scores = q.matmul(&k_t)?;
        let probs = super::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
        // [B, heads, len, d] -> [B, len, heads * d]
        let out = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, len, inner))?;
        outs.push(out);
    }
    if outs.len() == 1 {
        Ok(outs.remove(0))
    } else {
        Ok(Tensor::cat(&outs, 1)?)
    }
}

/// [`attend`] with at most `max_scores` score elements at once.
///
/// The query chunk is sized for one sample and samples are grouped to fill the
/// budget, so every sample's products have the same shapes whatever the batch:
/// its result does not depend on what else shares the call.
fn attend_chunked(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    head_dim: usize,
    max_scores: usize,
) -> Result<Tensor> {
    let (b, n, _) = q.dims3()?;
    let t = k.dim(1)?;
    let chunk = (max_scores / t.max(1)).clamp(1, n.max(1));
    if super::blas::attention_applies(q, k, v) && n > 0 {
        let mut rows = Vec::with_capacity(n.div_ceil(chunk));
        for start in (0..n).step_by(chunk) {
            crate::interrupt::poll()?;
            let len = chunk.min(n - start);
            rows.push(super::blas::attention(
                &q.narrow(1, start, len)?,
                k,
                v,
                heads,
            )?);
        }
        return Ok(if rows.len() == 1 {
            rows.remove(0)
        } else {
            Tensor::cat(&rows, 1)?
        });
    }
    let group = (max_scores / (chunk * t).max(1)).clamp(1, b.max(1));
    let dtype = v.dtype();
    let mut samples = Vec::with_capacity(b.div_ceil(group));
    for first in (0..b).step_by(group) {
        let size = group.min(b - first);
        let (q, k, v) = (
            q.narrow(0, first, size)?,
            k.narrow(0, first, size)?,
            v.narrow(0, first, size)?,
        );
        let mut rows = Vec::with_capacity(n.div_ceil(chunk));
        for start in (0..n).step_by(chunk) {
            crate::interrupt::poll()?;
            let len = chunk.min(n - start);
            let q = q.narrow(1, start, len)?;
            let outs = (0..heads)
                .map(|h| {
                    let qh = q.narrow(2, h * head_dim, head_dim)?.to_dtype(DType::F32)?;
                    let kh = k.narrow(2, h * head_dim, head_dim)?.to_dtype(DType::F32)?;
                    let vh = v.narrow(2, h * head_dim, head_dim)?;
                    let scores = super::blas::matmul(&qh, &kh.t()?)?;
                    let probs = super::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
                    super::blas::matmul(&probs, &vh)
                })
                .collect::<Result<Vec<_>>>()?;
            rows.push(Tensor::cat(&outs, 2)?);
        }
        samples.push(if rows.len() == 1 {
            rows.remove(0)
        } else {
            Tensor::cat(&rows, 1)?
        });
    }
    if samples.len() == 1 {
        Ok(samples.remove(0))
    } else {
        Ok(Tensor::cat(&samples, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::max_abs_diff;
    use candle_core::Device;

    /// Plain multi-head attention with split heads, as a reference.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Tensor {
        let split = |x: &Tensor| {
            let (b, n, i) = x.dims3().unwrap();
            x.reshape((b, n, heads, i / heads))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let (q, k, v) = (split(q), split(k), split(v));
        let scores = q.matmul(&k.t().unwrap()).unwrap();
        let probs = candle_nn::ops::softmax_last_dim(&scores).unwrap();
        let out = probs.matmul(&v).unwrap().transpose(1, 2).unwrap();
        let (b, n, h, d) = out.dims4().unwrap();
        out.reshape((b, n, h * d)).unwrap()
    }

    #[test]
    fn chunked_attention_matches_reference() {
        let dev = Device::Cpu;
        let (b, n, t, heads, d) = (2, 13, 7, 3, 4);
        // Views into fused projections, as the layers pass them.
        let qkv = Tensor::randn(0f32, 1., (b, n, 3 * heads * d), &dev).unwrap();
        let q = qkv.narrow(2, 0, heads * d).unwrap();
        let kv = Tensor::randn(0f32, 1., (b, t, 2 * heads * d), &dev).unwrap();
        let (k, v) = (
            kv.narrow(2, 0, heads * d).unwrap(),
            kv.narrow(2, heads * d, heads * d).unwrap(),
        );
        let want = reference(&q, &k, &v, heads);
        for max_scores in [1, 2 * 7 * 5, usize::MAX] {
            let got = attend_chunked(&q, &k, &v, heads, d, max_scores).unwrap();
            let err = max_abs_diff(&got, &want).unwrap();
            assert!(err < 1e-5, "max_scores {max_scores}: {err}");
        }
    }

    #[test]
    fn fused_attention_equals_the_chunked_kernels() {
        let dev = Device::Cpu;
        let (b, n, t, heads, d) = (3, 37, 11, 4, 8);
        // Seeded inputs: the half-precision bound below is checked on fixed data.
        let mut rng = crate::rng::TorchRng::new(7);
        let qkv = rng.randn_tensor(&[b, n, 3 * heads * d], &dev).unwrap();
        let q = qkv.narrow(2, 0, heads * d).unwrap();
        let kv = rng.randn_tensor(&[b, t, 2 * heads * d], &dev).unwrap();
        let (k, v) = (
            kv.narrow(2, 0, heads * d).unwrap(),
            kv.narrow(2, heads * d, heads * d).unwrap(),
        );
        let chunked = attend_chunked(&q, &k, &v, heads, d, MAX_SCORE_ELEMENTS).unwrap();
        // Whole, and cut into query chunks of 1 and of 5.
        for max_scores in [usize::MAX, b * heads * t, 5 * b * heads * t] {
            let fused = attend_fused(&q, &k, &v, heads, max_scores).unwrap();
            let err = max_abs_diff(&fused, &chunked).unwrap();
            assert!(err < 1e-5, "max_scores {max_scores}: {err}");
        }
        // Half inputs: the scores and softmax still run in f32, so against f32
        // attention on the same rounded inputs only the rounding of the
        // probabilities and of the output remains (|out| < 3 here, half's
        // spacing there is 2e-3).
        let half = |x: &Tensor| x.to_dtype(DType::F16).unwrap();
        let (qh, kh, vh) = (half(&q), half(&k), half(&v));
        let fused = attend_fused(&qh, &kh, &vh, heads, usize::MAX).unwrap();
        assert_eq!(fused.dtype(), DType::F16);
        let single = |x: &Tensor| x.to_dtype(DType::F32).unwrap();
        let rounded = attend_chunked(
            &single(&qh),
            &single(&kh),
            &single(&vh),
            heads,
            d,
            MAX_SCORE_ELEMENTS,
        )
        .unwrap();
        let err = max_abs_diff(&fused, &rounded).unwrap();
        assert!(err < 4e-3, "f16: {err}");
        assert_eq!(AttentionKernel::for_device(&dev), AttentionKernel::Chunked);
    }
}
