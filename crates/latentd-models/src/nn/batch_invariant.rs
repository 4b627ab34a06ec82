//! Matrix products whose per-sample results do not depend on the batch.
//!
//! The CPU GEMM picks its kernel by the product's shape: a matrix-vector kernel when
//! one side is 1 wide, dot-product ("horizontal") kernels when `m * n <= 256`, and
//! another depth blocking when `m, n <= 64` and `k > 512`. Each rounds differently.
//! Where the batch is folded into one side of a product (`[B * N, in] x [in, out]`),
//! a batch of 2 rows and one of 9 could take different kernels, and a job's pixels
//! would depend on what else shared its UNet call. Padding the side that carries the
//! batch up to the first extent that takes the general kernel makes each sample's
//! arithmetic a function of its own shape alone: the general kernel's depth blocking
//! depends on `k` only, and it sums every output over `k` in the same order.

use candle_core::Tensor;

use crate::Result;

/// The GEMM's limit for its dot-product kernels (`m * n` at most this).
const HORIZONTAL_MAX_ELEMENTS: usize = 256;
/// The GEMM's limit for its small-matrix blocking (both sides at most this) ...
const SMALL_MAX_SIDE: usize = 64;
/// ... which differs from the general blocking only for a deeper `k` than this.
const SMALL_MAX_DEPTH: usize = 512;

/// The smallest extent of the batch-carrying side of an `x * other` product of depth
/// `k` that the CPU GEMM computes with its general kernel.
pub(crate) fn general_kernel_extent(other: usize, k: usize) -> usize {
    let mut extent = (HORIZONTAL_MAX_ELEMENTS / other.max(1) + 1).max(2);
    if k > SMALL_MAX_DEPTH && other <= SMALL_MAX_SIDE {
        extent = extent.max(SMALL_MAX_SIDE + 1);
    }
    extent
}

/// `lhs [M, K] x rhs [K, N]` with the batch folded into `M`: row `i` of the result is
/// the same whatever `M` is.
pub(crate) fn matmul_batch_in_rows(lhs: &Tensor, rhs: &Tensor) -> Result<Tensor> {
    let (m, k) = lhs.dims2()?;
    let n = rhs.dim(1)?;
    let extent = general_kernel_extent(n, k);
    if !lhs.device().is_cpu() || m >= extent {
        return Ok(super::ops::matmul(lhs, rhs)?);
    }
    let padded = lhs.pad_with_zeros(0, 0, extent - m)?;
    Ok(super::ops::matmul(&padded, rhs)?.narrow(0, 0, m)?)
}

/// `lhs [M, K] x rhs [K, N]` with the batch folded into `N`: column `j` of the result
/// is the same whatever `N` is.
pub(crate) fn matmul_batch_in_columns(lhs: &Tensor, rhs: &Tensor) -> Result<Tensor> {
    let (m, k) = lhs.dims2()?;
    let n = rhs.dim(1)?;
    let extent = general_kernel_extent(m, k);
    if !rhs.device().is_cpu() || n >= extent {
        return Ok(super::ops::matmul(lhs, rhs)?);
    }
    let padded = rhs.pad_with_zeros(1, 0, extent - n)?;
    Ok(super::ops::matmul(lhs, &padded)?.narrow(1, 0, n)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::IndexOp;

    fn random(rows: usize, cols: usize, seed: u64) -> Tensor {
        crate::nn::test_tensor(&[rows, cols], seed)
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect()
    }

    #[test]
    fn rows_do_not_depend_on_how_many_share_the_product() {
        // Shapes on every side of the GEMM's kernel limits: thin, small, deep.
        for (n, k) in [
            (1, 8),
            (4, 16),
            (32, 64),
            (64, 600),
            (128, 320),
            (1280, 1280),
        ] {
            let rhs = random(k, n, 7);
            let all = random(40, k, 3);
            let alone = matmul_batch_in_rows(&all.i(0..1).unwrap(), &rhs).unwrap();
            for m in [2, 3, 5, 8, 17, 40] {
                let together = matmul_batch_in_rows(&all.i(0..m).unwrap(), &rhs).unwrap();
                assert_eq!(
                    bits(&together.i(0..1).unwrap()),
                    bits(&alone),
                    "n {n} k {k} m {m}"
                );
            }
        }
    }

    #[test]
    fn columns_do_not_depend_on_how_many_share_the_product() {
        for (m, k) in [(1, 8), (4, 16), (32, 64), (64, 600), (320, 2880)] {
            let lhs = random(m, k, 11);
            let all = random(k, 40, 5);
            let alone =
                matmul_batch_in_columns(&lhs, &all.i((.., 0..2)).unwrap().contiguous().unwrap())
                    .unwrap();
            for n in [3, 4, 8, 16, 33, 40] {
                let together = matmul_batch_in_columns(
                    &lhs,
                    &all.i((.., 0..n)).unwrap().contiguous().unwrap(),
                )
                .unwrap();
                assert_eq!(
                    bits(&together.i((.., 0..2)).unwrap()),
                    bits(&alone),
                    "m {m} k {k} n {n}"
                );
            }
        }
    }

    #[test]
    fn padding_leaves_the_product_unchanged() {
        let (lhs, rhs) = (random(3, 16, 1), random(16, 4, 2));
        let plain = lhs.matmul(&rhs).unwrap().to_vec2::<f32>().unwrap();
        let padded = matmul_batch_in_rows(&lhs, &rhs)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (a, b) in plain.iter().flatten().zip(padded.iter().flatten()) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
