//! The GEMM calls (OpenBLAS, or oneDNN's matmul with the `onednn` feature): operand
//! forms, GEMM tasks cut by shape and run in parallel (with a fused bias; the GEGLU
//! product's blocks are in [`super::geglu`]).

use candle_core::{DType, Layout, Tensor};

#[link(name = "openblas")]
extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn cblas_sgemm(
        order: i32,
        trans_a: i32,
        trans_b: i32,
        m: i32,
        n: i32,
        k: i32,
        alpha: f32,
        a: *const f32,
        lda: i32,
        b: *const f32,
        ldb: i32,
        beta: f32,
        c: *mut f32,
        ldc: i32,
    );
    fn openblas_set_num_threads(threads: i32);
}

/// Keeps OpenBLAS on the calling thread (set once, before the first product).
pub(super) fn single_threaded() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: a plain setter of the library's thread count.
    ONCE.call_once(|| unsafe { openblas_set_num_threads(1) });
}

/// Floating-point operations a block should have at least before a product is cut.
const BLOCK_FLOPS: usize = 64 << 20;
/// At most this many blocks per product: each block packs the shared operand again.
const MAX_BLOCKS: usize = 4;

/// One GEMM of a product: operands, their offsets and the output's.
#[derive(Debug, Clone, Copy)]
pub(super) struct Task {
    pub(super) a: Matrix,
    pub(super) a_off: usize,
    pub(super) b: Matrix,
    pub(super) b_off: usize,
    pub(super) c_off: usize,
    pub(super) ldc: usize,
}

impl Task {
    /// This product cut into blocks by its shape alone: along the output columns
    /// when the left operand is the smaller one (it is packed again per block),
    /// else along the rows.
    fn blocks(self) -> Vec<Task> {
        let (m, n) = (self.a.rows, self.b.cols);
        self.cut(m > n)
    }

    /// This product cut into blocks of whole output rows, by its shape alone.
    pub(super) fn row_blocks(self) -> Vec<Task> {
        self.cut(true)
    }

    pub(super) fn cut(self, by_rows: bool) -> Vec<Task> {
        let (m, k, n) = (self.a.rows, self.a.cols, self.b.cols);
        let parts = (2 * m * n * k / BLOCK_FLOPS).clamp(1, MAX_BLOCKS);
        if parts == 1 {
            return vec![self];
        }
        let by_columns = !by_rows;
        let extent = if by_columns { n } else { m };
        // Blocks of a multiple of 16 (the kernels' vector width), the last shorter.
        let width = extent.div_ceil(parts).div_ceil(16) * 16;
        (0..extent)
            .step_by(width)
            .map(|start| {
                let len = width.min(extent - start);
                if by_columns {
                    self.columns(start, len)
                } else {
                    let step = if self.a.transposed { 1 } else { self.a.ld };
                    Task {
                        a: Matrix {
                            rows: len,
                            ..self.a
                        },
                        a_off: self.a_off + start * step,
                        c_off: self.c_off + start * self.ldc,
                        ..self
                    }
                }
            })
            .collect()
    }

    /// The part of this product that writes output columns `start..start + len`.
    pub(super) fn columns(self, start: usize, len: usize) -> Task {
        let step = if self.b.transposed { self.b.ld } else { 1 };
        Task {
            b: Matrix {
                cols: len,
                ..self.b
            },
            b_off: self.b_off + start * step,
            c_off: self.c_off + start,
            ..self
        }
    }
}

/// Runs `tasks` (writing disjoint parts of an output of `len` elements, all of it
/// between them) in parallel and returns the output; with `bias`, each block adds it
/// to its rows while they are still in cache (see [`run_blocks`]). The output is not
/// zeroed first: every value is written by a product.
pub(super) fn run(
    tasks: Vec<Task>,
    a: &[f32],
    b: &[f32],
    len: usize,
    bias: Option<&[f32]>,
) -> candle_core::Result<Vec<f32>> {
    let blocks: Vec<Task> = tasks.into_iter().flat_map(Task::blocks).collect();
    let covered: usize = blocks.iter().map(|t| t.a.rows * t.b.cols).sum();
    if covered != len {
        candle_core::bail!("sgemm: the products write {covered} of {len} output values");
    }
    // SAFETY: the blocks write disjoint parts of the output (the caller's promise),
    // inside it (`sgemm` checks) and `len` values between them, so all of them.
    unsafe { filled(len, |out| run_blocks(&blocks, a, b, out, bias)) }
}

/// A fresh vector of `len` values, every one written through the [`Output`] that
/// `fill` is given (no zeroing pass first).
///
/// # Safety
/// When `fill` returns `Ok`, it must have written all `len` values.
pub(super) unsafe fn filled(
    len: usize,
    fill: impl FnOnce(Output) -> candle_core::Result<()>,
) -> candle_core::Result<Vec<f32>> {
    let mut out: Vec<f32> = Vec::with_capacity(len);
    fill(Output(out.as_mut_ptr(), len))?;
    // SAFETY: all `len` values are written (the caller's promise).
    unsafe { out.set_len(len) };
    Ok(out)
}

/// Runs `tasks`, which write disjoint parts of `out`, in parallel.
pub(super) fn run_into(
    tasks: Vec<Task>,
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
) -> candle_core::Result<()> {
    let blocks: Vec<Task> = tasks.into_iter().flat_map(Task::blocks).collect();
    run_blocks(&blocks, a, b, Output::new(out), None)
}

/// Runs `blocks` (disjoint parts of `out`) in parallel; with `bias`, `bias[j]` is
/// added to column `j` of every output row by the block that wrote it, while the rows
/// are in cache (for blocks whose outputs start at a row boundary of `bias.len()`-wide
/// rows).
fn run_blocks(
    blocks: &[Task],
    a: &[f32],
    b: &[f32],
    out: Output,
    bias: Option<&[f32]>,
) -> candle_core::Result<()> {
    use rayon::prelude::*;
    single_threaded();
    if let Some(bias) = bias {
        if blocks.iter().any(|t| t.ldc != bias.len()) {
            candle_core::bail!("sgemm: a bias of {} for rows of another width", bias.len());
        }
    }
    blocks.par_iter().try_for_each(|t| {
        // SAFETY: every block writes its own rows or columns of `out`, which
        // outlives the loop; `sgemm` checks each operand's extent.
        unsafe { sgemm((a, t.a_off, t.a), (b, t.b_off, t.b), (out, t.c_off, t.ldc))? };
        if let Some(bias) = bias {
            let (first, width) = (t.c_off % t.ldc, t.b.cols);
            for row in 0..t.a.rows {
                // SAFETY: values `sgemm` just wrote and checked, this block's alone.
                let row = unsafe { out.slice(t.c_off + row * t.ldc, width)? };
                for (y, b) in row.iter_mut().zip(&bias[first..first + width]) {
                    *y += b;
                }
            }
        }
        Ok(())
    })
}

/// The output buffer, shared by the blocks that write disjoint parts of it.
#[derive(Clone, Copy)]
pub(super) struct Output(*mut f32, usize);

// SAFETY: the tasks sharing an `Output` write disjoint elements (see `run_into`).
unsafe impl Send for Output {}
unsafe impl Sync for Output {}

impl Output {
    pub(super) fn new(buffer: &mut [f32]) -> Self {
        Self(buffer.as_mut_ptr(), buffer.len())
    }

    /// `len` elements from `start`, checked against the buffer.
    ///
    /// # Safety
    /// Those elements must be written already, and no other live slice or concurrent
    /// task may cover them.
    #[allow(clippy::mut_from_ref)]
    pub(super) unsafe fn slice(&self, start: usize, len: usize) -> candle_core::Result<&mut [f32]> {
        if start + len > self.1 {
            candle_core::bail!("sgemm: {len} elements at {start} lie outside the output");
        }
        // SAFETY: within the buffer; exclusive by the caller's promise.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) })
    }
}

/// One GEMM on the calling thread (see [`sgemm`]).
///
/// # Safety
/// As [`sgemm`]; concurrent calls must write disjoint parts of their outputs.
pub(super) unsafe fn sgemm_into(
    a: (&[f32], usize, Matrix),
    b: (&[f32], usize, Matrix),
    c: (Output, usize, usize),
) -> candle_core::Result<()> {
    single_threaded();
    // SAFETY: passed on from the caller.
    unsafe { sgemm(a, b, c) }
}

pub(super) fn applies(lhs: &Tensor, rhs: &Tensor) -> bool {
    let readable = |t: &Tensor| {
        let (dims, stride) = (t.dims(), t.stride());
        let r = dims.len();
        r >= 2 && Matrix::new(dims[r - 2], dims[r - 1], stride[r - 2], stride[r - 1]).is_some()
    };
    lhs.device().is_cpu()
        && rhs.device().is_cpu()
        && lhs.dtype() == DType::F32
        && rhs.dtype() == DType::F32
        && !lhs.track_op()
        && !rhs.track_op()
        && lhs.rank() >= 2
        && (rhs.rank() == 2 || rhs.rank() == lhs.rank())
        && readable(lhs)
        && readable(rhs)
}

/// A `rows x cols` matrix in a strided buffer, as BLAS reads it: `transposed` when
/// its columns are contiguous rather than its rows, `ld` the other stride.
#[derive(Debug, Clone, Copy)]
pub(super) struct Matrix {
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) transposed: bool,
    pub(super) ld: usize,
}

impl Matrix {
    /// A row-major `rows x cols` matrix with leading dimension `ld`.
    pub(super) fn row_major(rows: usize, cols: usize, ld: usize) -> Self {
        Self {
            rows,
            cols,
            transposed: false,
            ld,
        }
    }

    /// A `rows x cols` matrix stored column by column, `ld` apart.
    pub(super) fn transposed(rows: usize, cols: usize, ld: usize) -> Self {
        Self {
            rows,
            cols,
            transposed: true,
            ld,
        }
    }

    /// The form of a matrix with these dimensions and strides, if BLAS can read it.
    fn new(rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> Option<Self> {
        let row_major = (cols <= 1 || col_stride == 1) && (rows <= 1 || row_stride >= cols);
        if row_major {
            let ld = if rows <= 1 { cols.max(1) } else { row_stride };
            return Some(Self {
                rows,
                cols,
                transposed: false,
                ld,
            });
        }
        let col_major = (rows <= 1 || row_stride == 1) && (cols <= 1 || col_stride >= rows);
        col_major.then(|| Self {
            rows,
            cols,
            transposed: true,
            ld: if cols <= 1 { rows.max(1) } else { col_stride },
        })
    }
}

/// `c [m, n] (row-major, leading dimension ldc) = a x b`, on the calling thread:
/// through oneDNN's matmul with the `onednn` feature (for all but tiny products),
/// else OpenBLAS.
///
/// # Safety
/// `a`, `b` and `c` must hold the matrices their forms and offsets describe.
pub(super) unsafe fn sgemm(
    a: (&[f32], usize, Matrix),
    b: (&[f32], usize, Matrix),
    c: (Output, usize, usize),
) -> candle_core::Result<()> {
    let (a_data, a_off, a) = a;
    let (b_data, b_off, b) = b;
    let (Output(c_ptr, c_len), c_off, ldc) = c;
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m == 0 || n == 0 {
        return Ok(());
    }
    let extent = |off: usize, mat: Matrix| {
        let (outer, inner) = if mat.transposed {
            (mat.cols, mat.rows)
        } else {
            (mat.rows, mat.cols)
        };
        off + outer.saturating_sub(1) * mat.ld + inner
    };
    if k > 0 && (extent(a_off, a) > a_data.len() || extent(b_off, b) > b_data.len()) {
        candle_core::bail!("sgemm: an operand lies outside its buffer");
    }
    if c_off + (m - 1) * ldc + n > c_len {
        candle_core::bail!("sgemm: the output lies outside its buffer");
    }
    if k == 0 {
        // An empty sum: zeros, without asking a library what it does with k = 0.
        for row in 0..m {
            // SAFETY: inside the output, checked above.
            unsafe { std::ptr::write_bytes(c_ptr.add(c_off + row * ldc), 0, n) };
        }
        return Ok(());
    }
    // SAFETY: every operand's extent was checked against its buffer above.
    unsafe {
        product(
            (a_data.as_ptr().add(a_off), a),
            (b_data.as_ptr().add(b_off), b),
            (c_ptr.add(c_off), ldc),
        )
    }
}

/// Products with fewer floating-point operations go to OpenBLAS even with the
/// `onednn` feature: oneDNN's per-call set-up (memory objects, the product table)
/// costs more than it saves on the tiny models' products.
#[cfg(feature = "onednn")]
const ONEDNN_MIN_FLOPS: usize = 1 << 22;

/// [`sgemm`] on the library that suits its size (chosen by shape alone).
///
/// # Safety
/// As [`sgemm`], the extents checked.
unsafe fn product(
    a: (*const f32, Matrix),
    b: (*const f32, Matrix),
    c: (*mut f32, usize),
) -> candle_core::Result<()> {
    #[cfg(feature = "onednn")]
    if 2 * a.1.rows * a.1.cols * b.1.cols >= ONEDNN_MIN_FLOPS {
        // SAFETY: passed on from the caller.
        return unsafe { onednn_product(a, b, c) };
    }
    // SAFETY: passed on from the caller.
    unsafe { openblas_product(a, b, c) }
}

/// [`sgemm`] through oneDNN's matmul, which reads either form of each operand.
///
/// # Safety
/// As [`sgemm`], the extents checked.
#[cfg(feature = "onednn")]
unsafe fn onednn_product(
    (a_ptr, a): (*const f32, Matrix),
    (b_ptr, b): (*const f32, Matrix),
    (c_ptr, ldc): (*mut f32, usize),
) -> candle_core::Result<()> {
    use crate::nn::onednn::matmul;
    let strides = |mat: Matrix| {
        if mat.transposed {
            (1, mat.ld)
        } else {
            (mat.ld, 1)
        }
    };
    let shape = matmul::Product {
        m: a.rows,
        n: b.cols,
        k: a.cols,
        a: strides(a),
        b: strides(b),
        ldc,
    };
    // SAFETY: passed on from the caller.
    unsafe { matmul::sgemm(shape, a_ptr, b_ptr, c_ptr) }
}

/// [`sgemm`] through OpenBLAS. The call is made in column-major terms
/// (`c^T = b^T a^T`), which also keeps OpenBLAS off its row-major-only "direct"
/// kernels.
///
/// # Safety
/// As [`sgemm`], the extents checked.
unsafe fn openblas_product(
    (a_ptr, a): (*const f32, Matrix),
    (b_ptr, b): (*const f32, Matrix),
    (c_ptr, ldc): (*mut f32, usize),
) -> candle_core::Result<()> {
    const COL_MAJOR: i32 = 102;
    const NO_TRANS: i32 = 111;
    const TRANS: i32 = 112;
    let int = |x: usize| {
        i32::try_from(x).map_err(|_| candle_core::Error::Msg(format!("sgemm: {x} is too large")))
    };
    let trans = |mat: Matrix| if mat.transposed { TRANS } else { NO_TRANS };
    // SAFETY: passed on from the caller.
    unsafe {
        cblas_sgemm(
            COL_MAJOR,
            trans(b),
            trans(a),
            int(b.cols)?,
            int(a.rows)?,
            int(a.cols)?,
            1.0,
            b_ptr,
            int(b.ld)?,
            a_ptr,
            int(a.ld)?,
            0.0,
            c_ptr,
            int(ldc)?,
        );
    }
    Ok(())
}

/// The form of the last two dimensions of a layout.
pub(super) fn last_two(layout: &Layout, op: &str) -> candle_core::Result<Matrix> {
    let dims = layout.dims();
    let stride = layout.stride();
    let r = dims.len();
    Matrix::new(dims[r - 2], dims[r - 1], stride[r - 2], stride[r - 1])
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: unsupported strides {stride:?}")))
}
