//! The GEGLU product: `[h | gate]` computed block by block into a per-thread buffer,
//! each block leaving as `h * gelu(gate)`, so the full-width product is never written.

use super::gemm::{sgemm, single_threaded, Output, Task};
use crate::nn::scratch::with_buffer;

thread_local! {
    /// One GEGLU block's product rows (`[h | gate]` of its columns), kept between
    /// calls on each thread.
    static GEGLU_ROWS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One block of a GEGLU product: the rows of `task` (whose right-hand side is the
/// full `[h | gate]` width) and `cols` of the inner width, both halves.
#[derive(Debug, Clone, Copy)]
struct GegluBlock {
    task: Task,
    first_col: usize,
    cols: usize,
}

impl GegluBlock {
    /// `task`'s product cut into blocks by its shape alone, as [`Task::blocks`]
    /// would: by rows where the left-hand side is the larger operand, else by
    /// columns of the inner width (each block then reads only its columns of the
    /// weight, where blocks of rows would each read all of it).
    fn cut(task: Task, inner: usize) -> Vec<GegluBlock> {
        let (m, n) = (task.a.rows, task.b.cols);
        if m > n {
            return task
                .row_blocks()
                .into_iter()
                .map(|task| GegluBlock {
                    task,
                    first_col: 0,
                    cols: inner,
                })
                .collect();
        }
        task.columns(0, inner)
            .cut(false)
            .into_iter()
            .map(|block| GegluBlock {
                task,
                first_col: block.c_off - task.c_off,
                cols: block.b.cols,
            })
            .collect()
    }

    /// The product's columns `offset + first_col..` (`cols` of them) as a task (its
    /// output offset is unused: the block writes into its own buffer).
    fn columns(&self, offset: usize) -> Task {
        self.task.columns(offset + self.first_col, self.cols)
    }
}

/// Runs `tasks` (whose outputs are whole rows of `[h | gate]`, `2 * inner` wide,
/// with `bias` added) in parallel, each block through a per-thread buffer, and
/// returns `h * gelu(gate)` in rows `inner` wide: the full-width product is never
/// written out, and the activation reads each block while it is in cache.
pub(super) fn run_geglu(
    tasks: Vec<Task>,
    a: &[f32],
    b: &[f32],
    bias: &[f32],
    inner: usize,
) -> candle_core::Result<Vec<f32>> {
    use rayon::prelude::*;
    single_threaded();
    let width = 2 * inner;
    if bias.len() != width || tasks.iter().any(|t| t.ldc != width || t.b.cols != width) {
        candle_core::bail!("sgemm-geglu: rows of {width} with a bias of {}", bias.len());
    }
    let rows: usize = tasks.iter().map(|t| t.a.rows).sum();
    let blocks: Vec<GegluBlock> = tasks
        .into_iter()
        .flat_map(|t| GegluBlock::cut(t, inner))
        .collect();
    let mut out = vec![0f32; rows * inner];
    let base = Output::new(&mut out);
    blocks.par_iter().try_for_each(|block| {
        let (t, cols) = (block.task, block.cols);
        let first_row = t.c_off / width;
        with_buffer(&GEGLU_ROWS, t.a.rows * 2 * cols, |product| {
            let buffer = Output::new(product);
            let into_buffer = |task: Task, at: usize| {
                // SAFETY: the block's product goes to this thread's own buffer, which
                // `sgemm` checks it fits.
                unsafe {
                    sgemm(
                        (a, task.a_off, task.a),
                        (b, task.b_off, task.b),
                        (buffer, at, 2 * cols),
                    )
                }
            };
            if cols == inner {
                // All of [h | gate], side by side in the weight: one product.
                into_buffer(t, 0)?;
            } else {
                into_buffer(block.columns(0), 0)?;
                into_buffer(block.columns(inner), cols)?;
            }
            let h_bias = &bias[block.first_col..block.first_col + cols];
            let gate_bias = &bias[inner + block.first_col..inner + block.first_col + cols];
            for (i, row) in product.chunks_exact_mut(2 * cols).enumerate() {
                let (h, gate) = row.split_at_mut(cols);
                for (y, b) in h.iter_mut().zip(h_bias) {
                    *y += b;
                }
                for (y, b) in gate.iter_mut().zip(gate_bias) {
                    *y += b;
                }
                // SAFETY: these columns of these rows are this block's alone.
                let dst = unsafe { base.slice((first_row + i) * inner + block.first_col, cols)? };
                crate::nn::activations::geglu_row(dst, h, gate);
            }
            Ok::<(), candle_core::Error>(())
        })
    })?;
    Ok(out)
}
