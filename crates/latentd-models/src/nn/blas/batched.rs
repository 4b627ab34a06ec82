//! The batched products as candle ops: one GEMM per batch entry, with the bias or
//! the bias and GEGLU fused into each block ([`super::gemm`] runs them).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape};

use super::geglu::run_geglu;
use super::gemm::{last_two, run, Task};

fn f32_data<'a>(storage: &'a CpuStorage, op: &str) -> candle_core::Result<&'a [f32]> {
    match storage {
        CpuStorage::F32(data) => Ok(data),
        _ => candle_core::bail!("{op}: only f32 is supported"),
    }
}

/// The start offset of each batch entry (dimensions before the last two).
fn batch_offsets(layout: &Layout, batch: &[usize]) -> Vec<usize> {
    let stride = layout.stride();
    let mut offsets = vec![layout.start_offset()];
    for (d, &size) in batch.iter().enumerate() {
        offsets = offsets
            .iter()
            .flat_map(|&o| (0..size).map(move |i| o + i * stride[d]))
            .collect();
    }
    offsets
}

/// [`super::matmul`]: one GEMM per batch entry.
pub(super) struct Batched;

impl CustomOp2 for Batched {
    fn name(&self) -> &'static str {
        "openblas-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        batched(self.name(), (s1, l1), (s2, l2), None)
    }
}

/// [`super::matmul_bias`]: [`Batched`] with the bias added by each GEMM block.
pub(super) struct BatchedBias;

impl CustomOp3 for BatchedBias {
    fn name(&self) -> &'static str {
        "openblas-matmul-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let bias = contiguous_vector(s3, l3, self.name())?;
        batched(self.name(), (s1, l1), (s2, l2), Some(bias))
    }
}

/// [`super::matmul_bias_geglu`]: [`BatchedBias`] followed by GEGLU, per block.
pub(super) struct BatchedBiasGeglu {
    pub(super) inner: usize,
}

impl CustomOp3 for BatchedBiasGeglu {
    fn name(&self) -> &'static str {
        "openblas-matmul-bias-geglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let bias = contiguous_vector(s3, l3, self.name())?;
        let p = BatchTasks::new(self.name(), (s1, l1), (s2, l2))?;
        let out = run_geglu(p.tasks, p.a, p.b, bias, self.inner)?;
        let mut dims = p.dims;
        if let Some(last) = dims.last_mut() {
            *last = self.inner;
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

fn contiguous_vector<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    match (f32_data(storage, op)?, layout.contiguous_offsets()) {
        (data, Some((start, end))) if layout.dims().len() == 1 => Ok(&data[start..end]),
        _ => candle_core::bail!("{op}: the bias must be a contiguous vector"),
    }
}

/// One GEMM per batch entry of `lhs`, with `bias` added to every output row.
fn batched(
    name: &str,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    bias: Option<&[f32]>,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let p = BatchTasks::new(name, (s1, l1), (s2, l2))?;
    let len = p.dims.iter().product();
    let out = run(p.tasks, p.a, p.b, len, bias)?;
    Ok((CpuStorage::F32(out), Shape::from(p.dims)))
}

/// A batched product as GEMM tasks: one per batch entry of `lhs`, writing
/// consecutive `[m, n]` outputs.
struct BatchTasks<'a> {
    tasks: Vec<Task>,
    a: &'a [f32],
    b: &'a [f32],
    /// The output's dimensions.
    dims: Vec<usize>,
}

impl<'a> BatchTasks<'a> {
    fn new(
        name: &str,
        (s1, l1): (&'a CpuStorage, &Layout),
        (s2, l2): (&'a CpuStorage, &Layout),
    ) -> candle_core::Result<Self> {
        let (a_data, b_data) = (f32_data(s1, name)?, f32_data(s2, name)?);
        let (a, b) = (last_two(l1, name)?, last_two(l2, name)?);
        let batch = &l1.dims()[..l1.dims().len() - 2];
        let shared = l2.dims().len() == 2;
        if a.cols != b.rows || (!shared && &l2.dims()[..l2.dims().len() - 2] != batch) {
            candle_core::bail!(
                "{}: shapes {:?} and {:?} do not multiply",
                name,
                l1.dims(),
                l2.dims()
            );
        }
        let a_offsets = batch_offsets(l1, batch);
        let b_offsets = if shared {
            vec![l2.start_offset(); a_offsets.len()]
        } else {
            batch_offsets(l2, batch)
        };
        let (m, n) = (a.rows, b.cols);
        let tasks = a_offsets
            .iter()
            .zip(&b_offsets)
            .enumerate()
            .map(|(i, (&a_off, &b_off))| Task {
                a,
                a_off,
                b,
                b_off,
                c_off: i * m * n,
                ldc: n,
            })
            .collect();
        let mut dims = batch.to_vec();
        dims.extend([m, n]);
        Ok(Self {
            tasks,
            a: a_data,
            b: b_data,
            dims,
        })
    }
}
