//! Single-precision matrix products through OpenBLAS (the `openblas` feature).
//!
//! candle's CPU GEMM uses AVX2/FMA on stable Rust; OpenBLAS picks kernels for the CPU
//! it runs on at load time (AVX-512 on Skylake-X and newer), about 1.6-3x the
//! throughput on the UNet's shapes (BENCHMARKS.md). It is used for f32 CPU tensors that
//! track no gradient; anything else goes to candle's `matmul`.
//!
//! OpenBLAS also picks kernels by shape (a small-matrix path, direct kernels, edge
//! tiles), so a product with the batch folded into one side would round a sample's
//! values differently depending on the batch. Products here therefore run **one GEMM
//! per sample** ([`matmul`] over batch entries, [`conv_same`] for the im2col
//! convolution), each cut into blocks by its own shape alone: a sample's arithmetic
//! is a function of its shape, never of the batch or of the thread count.
//!
//! OpenBLAS runs single-threaded and the blocks run on the rayon pool candle's other
//! kernels use: OpenBLAS's own threads would spin between calls, taking cores from
//! those kernels on a small machine.
//!
//! With the `onednn` feature as well, each of those GEMMs is oneDNN's matmul instead
//! (`nn::onednn::matmul`), cut and scheduled the same way: 10-40% faster on one
//! thread on the model's shapes.

use candle_core::Tensor;

use crate::Result;

/// `lhs [.., M, K] x rhs [.., K, N]`; `rhs` may also be rank 2, shared by every batch
/// entry of `lhs`. Each batch entry is its own GEMM when OpenBLAS is used.
pub(crate) fn matmul(lhs: &Tensor, rhs: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "openblas")]
    if gemm::applies(lhs, rhs) {
        return Ok(lhs.apply_op2_no_bwd(rhs, &batched::Batched)?);
    }
    if super::ops::is_cpu_bf16(lhs) {
        // No CPU GEMM for bf16: multiply in f32, round the product back.
        let f32 = candle_core::DType::F32;
        let product = matmul(&lhs.to_dtype(f32)?, &rhs.to_dtype(f32)?)?;
        return Ok(product.to_dtype(candle_core::DType::BF16)?);
    }
    if rhs.rank() == 2 && lhs.rank() > 2 {
        return Ok(lhs.broadcast_matmul(rhs)?);
    }
    Ok(lhs.matmul(rhs)?)
}

/// `lhs [.., M, K] x rhs [K, N] + bias [N]`, the bias added by each GEMM block to the
/// rows it just wrote (one pass over the output less than a separate add) where
/// [`applies`] holds and the bias is an `f32` CPU vector; else [`matmul`] and an add.
pub(crate) fn matmul_bias(lhs: &Tensor, rhs: &Tensor, bias: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "openblas")]
    if fused_bias_applies(lhs, rhs, bias) {
        return Ok(lhs.apply_op3_no_bwd(rhs, &bias.contiguous()?, &batched::BatchedBias)?);
    }
    Ok(matmul(lhs, rhs)?.broadcast_add(bias)?)
}

/// `geglu(lhs [.., M, K] x rhs [K, 2 * inner] + bias)` -> `[.., M, inner]`, where
/// `geglu([h | gate]) = h * gelu(gate)`: each GEMM block's rows go through a
/// per-thread buffer and leave as activations, so the full-width product is never
/// written out (where [`matmul_bias`]'s fused path applies; else it and the
/// activation).
pub(crate) fn matmul_bias_geglu(
    lhs: &Tensor,
    rhs: &Tensor,
    bias: &Tensor,
    inner: usize,
) -> Result<Tensor> {
    #[cfg(feature = "openblas")]
    if inner > 0 && bias.dims() == [2 * inner] && fused_bias_applies(lhs, rhs, bias) {
        let op = batched::BatchedBiasGeglu { inner };
        return Ok(lhs.apply_op3_no_bwd(rhs, &bias.contiguous()?, &op)?);
    }
    super::activations::geglu(&matmul_bias(lhs, rhs, bias)?, inner)
}

/// Whether the products with a fused bias take these operands: [`applies`], a rank-2
/// right-hand side, and a bias of its width that is an `f32` CPU vector tracking no
/// gradient.
#[cfg(feature = "openblas")]
fn fused_bias_applies(lhs: &Tensor, rhs: &Tensor, bias: &Tensor) -> bool {
    gemm::applies(lhs, rhs)
        && rhs.rank() == 2
        && bias.dims() == [rhs.dims()[1]]
        && bias.device().is_cpu()
        && bias.dtype() == candle_core::DType::F32
        && !bias.track_op()
}

/// Whether [`matmul`] and [`conv_same`] take OpenBLAS for these operands.
pub(crate) fn applies(lhs: &Tensor, rhs: &Tensor) -> bool {
    #[cfg(feature = "openblas")]
    {
        gemm::applies(lhs, rhs)
    }
    #[cfg(not(feature = "openblas"))]
    {
        let _ = (lhs, rhs);
        false
    }
}

/// A stride-1 "same" `k x k` convolution without bias: `xs [B, C, H, W]` (f32, CPU)
/// and `weight [M, C * k * k]` to `[B, M, H * W]`, unfolding into a reused per-thread
/// buffer instead of a fresh matrix per call, one GEMM per sample (or per band of
/// image rows for large images). Only where [`applies`] holds for the weight and `xs`.
pub(crate) fn conv_same(
    xs: &Tensor,
    weight: &Tensor,
    kernel: usize,
    padding: usize,
) -> Result<Tensor> {
    #[cfg(feature = "openblas")]
    {
        Ok(xs
            .contiguous()?
            .apply_op2_no_bwd(weight, &conv::Im2ColGemm { kernel, padding })?)
    }
    #[cfg(not(feature = "openblas"))]
    {
        let _ = (xs, weight, kernel, padding);
        Err(candle_core::Error::Msg("conv_same needs the openblas feature".into()).into())
    }
}

/// Whether [`attention`] takes these operands.
pub(crate) fn attention_applies(q: &Tensor, k: &Tensor, v: &Tensor) -> bool {
    let rows = |t: &Tensor| t.rank() == 3 && t.stride()[2] == 1;
    applies(q, k) && applies(k, v) && rows(q) && rows(k) && rows(v)
}

/// Softmax attention of `q [B, L, heads * head_dim]` (already scaled) over
/// `k, v [B, T, heads * head_dim]` (views with unit stride along features), one task
/// per sample and head: `q k^T` into a reused per-thread buffer, the softmax in place,
/// then the product with `v` written into the output's columns of that head. Only
/// where [`attention_applies`] holds.
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    #[cfg(feature = "openblas")]
    {
        Ok(q.apply_op3_no_bwd(k, v, &attention::Attention { heads })?)
    }
    #[cfg(not(feature = "openblas"))]
    {
        let _ = (q, k, v, heads);
        Err(candle_core::Error::Msg("attention needs the openblas feature".into()).into())
    }
}

#[cfg(feature = "openblas")]
mod attention;
#[cfg(feature = "openblas")]
mod batched;
#[cfg(feature = "openblas")]
mod conv;
#[cfg(feature = "openblas")]
mod geglu;
#[cfg(feature = "openblas")]
mod gemm;

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::IndexOp;

    use crate::nn::test_tensor as random;
    use crate::pipeline::max_abs_diff;

    /// The products of the models' linear layers, attention and text encoder get
    /// oneDNN's AVX-512 (or AVX2) kernels, never its reference code.
    #[cfg(all(feature = "openblas", feature = "onednn"))]
    #[test]
    fn onednn_products_take_vector_kernels() {
        use crate::nn::onednn::matmul::{kernel_name, Product};
        let shapes = [
            // A linear layer over 4096 tokens (B is a transposed weight), a text
            // encoder's 77-token one, attention's scores (K^T) and values.
            (4096, 960, 320, (320, 1), (1, 320)),
            (77, 2304, 768, (768, 1), (1, 768)),
            (512, 4096, 40, (960, 1), (1, 960)),
            (512, 40, 4096, (4096, 1), (960, 1)),
        ];
        for (m, n, k, a, b) in shapes {
            let name = kernel_name(Product {
                m,
                n,
                k,
                a,
                b,
                ldc: n,
            })
            .unwrap();
            assert!(!name.contains("ref"), "{m}x{n}x{k}: {name}");
        }
    }

    #[test]
    fn products_match_candle_for_every_stride_form() {
        let a = random(&[3, 5, 7], 1);
        let b = random(&[3, 7, 4], 2);
        let w = random(&[7, 4], 3);
        let cases: Vec<(Tensor, Tensor)> = vec![
            (a.clone(), b.clone()),
            // Transposed views on either side.
            (a.clone(), random(&[3, 4, 7], 4).transpose(1, 2).unwrap()),
            (random(&[3, 7, 5], 5).transpose(1, 2).unwrap(), b.clone()),
            // Narrowed columns (row stride larger than the width).
            (random(&[3, 5, 9], 6).narrow(2, 2, 7).unwrap(), b.clone()),
            // A broadcast batch (stride 0).
            (
                a.clone(),
                w.unsqueeze(0).unwrap().broadcast_as((3, 7, 4)).unwrap(),
            ),
            // Rank 2, and 1-wide matrices.
            (a.i(0).unwrap(), w.clone()),
            (random(&[1, 7], 7), w.clone()),
            (random(&[5, 7], 8), random(&[7, 1], 9)),
            // Products large enough for oneDNN (with that feature): a transposed
            // left-hand side, a narrowed one times a transposed right-hand side.
            (
                random(&[2, 300, 200], 20).transpose(1, 2).unwrap(),
                random(&[2, 300, 100], 21),
            ),
            (
                random(&[2, 200, 310], 22).narrow(2, 5, 300).unwrap(),
                random(&[2, 100, 300], 23).transpose(1, 2).unwrap(),
            ),
        ];
        for (lhs, rhs) in cases {
            let ours = matmul(&lhs, &rhs).unwrap();
            let reference = lhs.matmul(&rhs.contiguous().unwrap()).unwrap();
            assert_eq!(ours.dims(), reference.dims());
            assert!(max_abs_diff(&ours, &reference).unwrap() < 1e-4);
        }
        // A shared right-hand side of rank 2.
        let ours = matmul(&a, &w).unwrap();
        assert!(max_abs_diff(&ours, &a.broadcast_matmul(&w).unwrap()).unwrap() < 1e-5);
        // With a bias, added by each block of a product cut into several (by columns
        // and by rows) and by an uncut one.
        for (m, k, n) in [(5, 7, 4), (100, 512, 2048), (2048, 512, 100)] {
            let lhs = random(&[2, m, k], 10);
            let rhs = random(&[n, k], 11).t().unwrap();
            let bias = random(&[n], 12);
            let ours = matmul_bias(&lhs, &rhs, &bias).unwrap();
            let reference = lhs
                .broadcast_matmul(&rhs.contiguous().unwrap())
                .unwrap()
                .broadcast_add(&bias)
                .unwrap();
            let err = max_abs_diff(&ours, &reference).unwrap();
            assert!(err < 1e-4, "{m}x{k}x{n}: {err}");
        }
    }

    /// The GEGLU product equals the product with its bias followed by the
    /// activation, uncut, cut into blocks of rows, and cut into blocks of the inner
    /// width's columns (each block's h and gate columns as two products), and a
    /// sample's rows are the same bits alone as batched.
    #[test]
    fn geglu_product_matches_product_then_activation() {
        for (m, k, inner) in [(5, 7, 3), (1500, 64, 400), (96, 512, 1024), (64, 512, 2048)] {
            let lhs = (random(&[3, m, k], 30) * 2.0).unwrap();
            let rhs = random(&[2 * inner, k], 31).t().unwrap();
            let bias = random(&[2 * inner], 32);
            let ours = matmul_bias_geglu(&lhs, &rhs, &bias, inner).unwrap();
            assert_eq!(ours.dims(), [3, m, inner]);
            let product = matmul_bias(&lhs, &rhs, &bias).unwrap();
            let reference = crate::nn::activations::geglu(&product, inner).unwrap();
            // Relative to the largest output: the blocks differ in shape from the
            // plain product's, so the sums round differently.
            let scale = reference.abs().unwrap().max_all().unwrap();
            let scale = scale.to_scalar::<f32>().unwrap().max(1.0);
            let err = max_abs_diff(&ours, &reference).unwrap() / scale;
            assert!(err < 1e-5, "{m}x{k}x{inner}: {err}");
            let alone = matmul_bias_geglu(&lhs.i(1..2).unwrap(), &rhs, &bias, inner).unwrap();
            let batched = ours.i(1..2).unwrap();
            let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(bits(&alone), bits(&batched), "{m}x{k}x{inner}");
        }
    }
}
