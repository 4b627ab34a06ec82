//! 2D convolutions through oneDNN (the `onednn` feature; Debian: `libdnnl-dev` to
//! build, `libdnnl2` to run): direct convolutions with this CPU's AVX-512 kernels
//! instead of an im2col copy and a matrix product.
//!
//! The weights are packed at load into the blocked layout oneDNN's kernel wants, and
//! the original tensor is dropped, so memory does not grow (a kernel that wants
//! another layout for some input size gets its own copy, made once). Each sample's
//! output rows are cut into bands, set by the image's shape and the thread count
//! alone, and every (sample, band) pair is one task on the rayon pool with oneDNN
//! confined to the calling thread: a sample's arithmetic never depends on the batch
//! it shares a call with, and a task's working memory stays small however large the
//! image is.

mod ffi;
pub(in crate::nn) mod matmul;

use std::cell::RefCell;
use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::nn::scratch::with_buffer;
use crate::Result;

/// The input size a layer's weight layout is first chosen for.
const LAYOUT_HINT: i32 = 32;
/// Input sizes one layer keeps plans for before it starts over.
const MAX_PLANS: usize = 32;
/// A band's input rows hold at most about this many bytes (several bands otherwise).
const BAND_BYTES: usize = 4 << 20;
/// A band has at least this many output rows when it is cut for parallelism alone.
const MIN_BAND_ROWS: usize = 4;

/// Whether a convolution with this weight is packed for oneDNN: a plain float32
/// CPU tensor (a training variable keeps candle's differentiable path).
pub(crate) fn applies(weight: &Tensor) -> bool {
    weight.device().is_cpu() && weight.dtype() == DType::F32 && !weight.is_variable()
}

/// Weights packed in one of oneDNN's layouts.
struct Packed(NonNull<ffi::Weights>);

// SAFETY: packed weights are written once, when made, and only read after (every
// function taking them takes a const pointer); they are freed once, on drop.
unsafe impl Send for Packed {}
unsafe impl Sync for Packed {}

impl Drop for Packed {
    fn drop(&mut self) {
        // SAFETY: made by `ld_weights_pack` or `ld_weights_repack`, freed only here.
        unsafe { ffi::ld_weights_free(self.0.as_ptr()) }
    }
}

/// A band's convolution, with the weights its kernel takes.
struct Plan {
    plan: NonNull<ffi::Plan>,
    scratch_bytes: usize,
    weights: Arc<Packed>,
}

// SAFETY: a plan is immutable after `ld_plan_create`; runs take a const pointer and
// caller-owned scratch memory, which oneDNN allows from several threads at once.
unsafe impl Send for Plan {}
unsafe impl Sync for Plan {}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: created by `ld_plan_create`, freed only here.
        unsafe { ffi::ld_plan_free(self.plan.as_ptr()) }
    }
}

impl Plan {
    /// The name of the kernel oneDNN chose (for example `brgconv:avx512_core`).
    fn kernel_name(&self) -> String {
        // SAFETY: a NUL-terminated buffer inside the plan, alive as long as it is.
        let name = unsafe { std::ffi::CStr::from_ptr(ffi::ld_plan_impl(self.plan.as_ptr())) };
        name.to_string_lossy().into_owned()
    }
}

/// One band of output rows: where its rows start in the input and the output, and
/// which plan runs it (bands of the same height and padding share one).
#[derive(Debug, Clone, Copy)]
struct RowBand {
    in_first: usize,
    out_first: usize,
    plan: usize,
}

/// Everything one input size needs: its bands and their plans.
struct SizePlans {
    bands: Vec<RowBand>,
    plans: Vec<Plan>,
}

/// The plans for one input size; `None` where oneDNN had no kernel.
type Plans = Option<Arc<SizePlans>>;

/// A convolution with its weights packed for oneDNN.
pub(crate) struct PackedConv {
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    /// The weights in the layout chosen at load first, then in any other layout a
    /// kernel for another input size asked for (rare: a layout is mostly a function
    /// of the channel counts alone).
    layouts: Mutex<Vec<Arc<Packed>>>,
    bias: Option<Vec<f32>>,
    plans: Mutex<HashMap<(usize, usize), Plans>>,
    /// candle's convolution on the unpacked weights, built the first time an input
    /// needs it (another dtype, or a size oneDNN has no kernel for).
    fallback: OnceLock<candle_nn::Conv2d>,
}

impl std::fmt::Debug for PackedConv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedConv")
            .field("in_channels", &self.in_channels)
            .field("out_channels", &self.out_channels)
            .field("kernel", &self.kernel)
            .field("stride", &self.stride)
            .field("padding", &self.padding)
            .finish()
    }
}

fn status(rc: i32, what: &str) -> candle_core::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(candle_core::Error::Msg(format!(
            "oneDNN: {what} failed (status {rc})"
        )))
    }
}

fn to_i32(n: usize) -> candle_core::Result<i32> {
    i32::try_from(n).map_err(|_| candle_core::Error::Msg(format!("oneDNN: {n} is too large")))
}

fn poisoned() -> candle_core::Error {
    candle_core::Error::Msg("oneDNN: a cache lock was poisoned".into())
}

/// How many bands of output rows an image is cut into: enough for every thread
/// (in whole rounds), and more where one band's input would be large.
fn band_count(in_bytes: usize, out_rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let for_memory = in_bytes.div_ceil(BAND_BYTES);
    let for_threads = threads.min(out_rows / MIN_BAND_ROWS);
    let count = for_memory.max(for_threads).max(1);
    let count = if count > 1 {
        count.div_ceil(threads) * threads
    } else {
        1
    };
    count.min(out_rows.max(1))
}

impl PackedConv {
    /// Packs `weight` (`[out, in, k, k]`, f32 on the CPU) and `bias` (`[out]`).
    pub(crate) fn new(
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let (out_channels, in_channels, kernel, kernel_w) = weight.dims4()?;
        if kernel != kernel_w {
            return Err(candle_core::Error::Msg(format!(
                "oneDNN: the kernel must be square, got {kernel}x{kernel_w}"
            ))
            .into());
        }
        let data = weight.flatten_all()?.to_vec1::<f32>()?;
        let bias = bias
            .map(|b| b.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>())
            .transpose()?;
        let mut packed = std::ptr::null_mut();
        // SAFETY: `data` holds the whole OIHW weight, as declared.
        let rc = unsafe {
            ffi::ld_weights_pack(
                to_i32(out_channels)?,
                to_i32(in_channels)?,
                to_i32(kernel)?,
                to_i32(stride)?,
                to_i32(padding)?,
                i32::from(bias.is_some()),
                LAYOUT_HINT,
                data.as_ptr(),
                &mut packed,
            )
        };
        status(rc, "packing a convolution's weights")?;
        let weights = NonNull::new(packed)
            .ok_or_else(|| candle_core::Error::Msg("oneDNN: no weights".into()))?;
        Ok(Self {
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            layouts: Mutex::new(vec![Arc::new(Packed(weights))]),
            bias,
            plans: Mutex::new(HashMap::new()),
            fallback: OnceLock::new(),
        })
    }

    /// The output size of one spatial side.
    fn out_size(&self, side: usize) -> Option<usize> {
        (side + 2 * self.padding)
            .checked_sub(self.kernel)
            .map(|n| n / self.stride + 1)
    }

    /// The weights in the layout chosen at load.
    fn first_layout(&self) -> candle_core::Result<Arc<Packed>> {
        self.layouts
            .lock()
            .map_err(|_| poisoned())?
            .first()
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg("oneDNN: a layer has no weights".into()))
    }

    /// The weights in the layout `plan` takes, repacked from the first on first use.
    fn weights_for(&self, plan: NonNull<ffi::Plan>) -> candle_core::Result<Arc<Packed>> {
        let mut layouts = self.layouts.lock().map_err(|_| poisoned())?;
        // SAFETY: the plan and the weights are alive.
        let accepted = layouts
            .iter()
            .find(|w| unsafe { ffi::ld_plan_accepts(plan.as_ptr(), w.0.as_ptr()) } != 0);
        if let Some(weights) = accepted {
            return Ok(weights.clone());
        }
        let first = layouts
            .first()
            .ok_or_else(|| candle_core::Error::Msg("oneDNN: a layer has no weights".into()))?;
        let mut repacked = std::ptr::null_mut();
        // SAFETY: `first` and the plan are alive; `repacked` receives new weights.
        let rc = unsafe { ffi::ld_weights_repack(first.0.as_ptr(), plan.as_ptr(), &mut repacked) };
        status(rc, "repacking a convolution's weights")?;
        let weights = Arc::new(Packed(NonNull::new(repacked).ok_or_else(|| {
            candle_core::Error::Msg("oneDNN: no repacked weights".into())
        })?));
        tracing::debug!(layouts = layouts.len() + 1, "convolution weights repacked");
        layouts.push(weights.clone());
        Ok(weights)
    }

    /// One plan for a band of `rows` input rows with the given padding, or `None`
    /// where oneDNN has no kernel for it.
    fn make_plan(
        &self,
        (h, w, oh): (usize, usize, usize),
        (rows, pad_top, pad_bottom): (usize, usize, usize),
    ) -> candle_core::Result<Option<Plan>> {
        let first = self.first_layout()?;
        let mut plan = std::ptr::null_mut();
        // SAFETY: the weights are alive; `plan` receives a new plan or stays null.
        let rc = unsafe {
            ffi::ld_plan_create(
                first.0.as_ptr(),
                to_i32(h)?,
                to_i32(w)?,
                to_i32(rows)?,
                to_i32(pad_top)?,
                to_i32(pad_bottom)?,
                to_i32(oh)?,
                &mut plan,
            )
        };
        let Some(plan) = NonNull::new(plan).filter(|_| rc == 0) else {
            tracing::debug!(rc, h, w, rows, "oneDNN has no kernel for this convolution");
            return Ok(None);
        };
        // SAFETY: a plan just made.
        let scratch_bytes = unsafe { ffi::ld_plan_scratch_bytes(plan.as_ptr()) };
        let weights = match self.weights_for(plan) {
            Ok(weights) => weights,
            Err(err) => {
                // SAFETY: the plan was just made and is owned by no one else.
                unsafe { ffi::ld_plan_free(plan.as_ptr()) };
                return Err(err);
            }
        };
        Ok(Some(Plan {
            plan,
            scratch_bytes,
            weights,
        }))
    }

    /// The bands and plans for an `h x w` input, made on first use.
    fn plans(&self, h: usize, w: usize) -> candle_core::Result<Plans> {
        let mut cache = self.plans.lock().map_err(|_| poisoned())?;
        if let Some(plans) = cache.get(&(h, w)) {
            return Ok(plans.clone());
        }
        let made = self.make_size_plans(h, w)?.map(Arc::new);
        if cache.len() >= MAX_PLANS {
            cache.clear();
        }
        cache.insert((h, w), made.clone());
        Ok(made)
    }

    fn make_size_plans(&self, h: usize, w: usize) -> candle_core::Result<Option<SizePlans>> {
        let (Some(oh), Some(_)) = (self.out_size(h), self.out_size(w)) else {
            return Ok(None);
        };
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        let count = band_count(self.in_channels * h * w * 4, oh);
        let per_band = oh.div_ceil(count);
        let mut bands = Vec::with_capacity(count);
        let mut plans: Vec<Plan> = Vec::new();
        let mut shapes: Vec<(usize, usize, usize)> = Vec::new();
        for out_first in (0..oh).step_by(per_band) {
            let out_rows = per_band.min(oh - out_first);
            // Input rows [top, bottom) in padded coordinates, then clipped to the image.
            let top = (out_first * s) as isize - p as isize;
            let bottom = ((out_first + out_rows - 1) * s + k) as isize - p as isize;
            let in_first = top.max(0) as usize;
            let in_end = (bottom.min(h as isize)).max(0) as usize;
            if in_end <= in_first {
                return Ok(None);
            }
            let shape = (
                in_end - in_first,
                (in_first as isize - top) as usize,
                (bottom - in_end as isize) as usize,
            );
            let plan = match shapes.iter().position(|known| *known == shape) {
                Some(index) => index,
                None => match self.make_plan((h, w, oh), shape)? {
                    Some(plan) => {
                        plans.push(plan);
                        shapes.push(shape);
                        plans.len() - 1
                    }
                    None => return Ok(None),
                },
            };
            bands.push(RowBand {
                in_first,
                out_first,
                plan,
            });
        }
        Ok(Some(SizePlans { bands, plans }))
    }

    /// The name of the kernel used for an `h x w` input, if oneDNN has one.
    pub(crate) fn kernel_name(&self, h: usize, w: usize) -> Result<Option<String>> {
        Ok(self
            .plans(h, w)?
            .and_then(|plans| plans.plans.first().map(Plan::kernel_name)))
    }

    /// candle's convolution on the weights unpacked from oneDNN's layout.
    fn fallback(&self) -> candle_core::Result<&candle_nn::Conv2d> {
        if let Some(conv) = self.fallback.get() {
            return Ok(conv);
        }
        let per_out = self.in_channels * self.kernel * self.kernel;
        let mut data = vec![0f32; self.out_channels * per_out];
        let weights = self.first_layout()?;
        // SAFETY: `data` has room for the whole OIHW weight.
        let rc = unsafe { ffi::ld_weights_unpack(weights.0.as_ptr(), data.as_mut_ptr()) };
        status(rc, "unpacking a convolution's weights")?;
        let shape = (
            self.out_channels,
            self.in_channels,
            self.kernel,
            self.kernel,
        );
        let weight = Tensor::from_vec(data, shape, &candle_core::Device::Cpu)?;
        let bias = self
            .bias
            .as_ref()
            .map(|b| Tensor::new(b.as_slice(), &candle_core::Device::Cpu))
            .transpose()?;
        let cfg = candle_nn::Conv2dConfig {
            padding: self.padding,
            stride: self.stride,
            ..Default::default()
        };
        Ok(self
            .fallback
            .get_or_init(|| candle_nn::Conv2d::new(weight, bias, cfg)))
    }

    /// candle's convolution one sample at a time (so a sample's result does not
    /// depend on its batch here either), in the weights' dtype.
    fn forward_fallback(&self, xs: &Tensor) -> Result<Tensor> {
        let conv = self.fallback()?;
        let ys = super::conv::candle_per_sample(conv, &xs.to_dtype(conv.weight().dtype())?)?;
        Ok(ys.to_dtype(xs.dtype())?)
    }

    /// `[B, in, H, W]` -> `[B, out, H', W']`, the bias included.
    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = xs.dims4()?;
        if self.out_size(h).is_none() || self.out_size(w).is_none() {
            return Err(candle_core::Error::Msg(format!(
                "a {h}x{w} input is smaller than the convolution's {k}x{k} kernel",
                k = self.kernel
            ))
            .into());
        }
        if xs.device().is_cpu() && xs.dtype() == DType::F32 && c == self.in_channels {
            if let Some(plans) = self.plans(h, w)? {
                let op = Forward { conv: self, plans };
                return Ok(xs.contiguous()?.apply_op1_no_bwd(&op)?);
            }
        }
        // candle reports shape errors in its usual words.
        self.forward_fallback(xs)
    }
}

thread_local! {
    /// oneDNN's working memory (blocked copies of a band's input and output, its
    /// scratchpad), kept between calls on the thread that makes them.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Alignment oneDNN's kernels want for their buffers.
const ALIGN: usize = 64;

/// The output buffer, written by several tasks at once in disjoint rows.
#[derive(Clone, Copy)]
struct Output(*mut f32);

// SAFETY: every task writes only the rows of its own band of its own sample, so no
// two tasks touch the same element; the buffer outlives the tasks.
unsafe impl Send for Output {}
unsafe impl Sync for Output {}

impl Output {
    /// The address `offset` values in.
    ///
    /// # Safety
    /// `offset` must lie inside the buffer.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: the caller's promise.
        unsafe { self.0.add(offset) }
    }
}

/// One forward call: a layer and its plans for the input's size.
struct Forward<'a> {
    conv: &'a PackedConv,
    plans: Arc<SizePlans>,
}

impl Forward<'_> {
    /// Runs `plan` with its input and output at `src` and `dst` (a band's first rows).
    ///
    /// # Safety
    /// `src` and `dst` must point into NCHW images of the sizes the plan was made for,
    /// at the band's first input and output rows, and no other task may write the
    /// band's output rows.
    unsafe fn run(&self, plan: &Plan, src: *const f32, dst: *mut f32) -> candle_core::Result<()> {
        let bias = self
            .conv
            .bias
            .as_ref()
            .map_or(std::ptr::null(), |b| b.as_ptr());
        with_buffer(&SCRATCH, plan.scratch_bytes + ALIGN, |buffer| {
            let skip = buffer.as_ptr().align_offset(ALIGN);
            let scratch = buffer[skip..].as_mut_ptr();
            // SAFETY: the caller's promise for `src` and `dst`; `bias` has `out` values
            // or is null; `scratch` is aligned and `scratch_bytes` long; the plan takes
            // its weights.
            let rc = unsafe {
                ffi::ld_plan_run(
                    plan.plan.as_ptr(),
                    plan.weights.0.as_ptr(),
                    src,
                    bias,
                    dst,
                    scratch.cast(),
                )
            };
            status(rc, "a convolution")
        })
    }
}

impl CustomOp1 for Forward<'_> {
    fn name(&self) -> &'static str {
        "onednn-conv2d"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(x) = storage else {
            candle_core::bail!("{}: only f32 is supported", self.name());
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{}: the input must be contiguous", self.name());
        };
        let x = &x[start..end];
        let (b, c, h, w) = layout.shape().dims4()?;
        let conv = self.conv;
        let (Some(oh), Some(ow)) = (conv.out_size(h), conv.out_size(w)) else {
            candle_core::bail!(
                "{}: the input {h}x{w} is smaller than the kernel",
                self.name()
            );
        };
        let (per_in, per_out) = (c * h * w, conv.out_channels * oh * ow);
        if x.len() != b * per_in {
            candle_core::bail!("{}: the input does not match its shape", self.name());
        }
        let len = b * per_out;
        let mut out: Vec<f32> = Vec::with_capacity(len);
        let dst = Output(out.as_mut_ptr());
        let bands = &self.plans.bands;
        (0..b * bands.len()).into_par_iter().try_for_each(|task| {
            let (sample, band) = (task / bands.len(), bands[task % bands.len()]);
            let plan = &self.plans.plans[band.plan];
            let src = x[sample * per_in + band.in_first * w..].as_ptr();
            // SAFETY: both offsets are inside their buffers (`out` has room for
            // `len` values); the band's rows of this sample are this task's alone.
            unsafe {
                let dst = dst.at(sample * per_out + band.out_first * ow);
                self.run(plan, src, dst)
            }
        })?;
        // SAFETY: the bands cover every output row of every sample, and each task
        // wrote all channels of its rows, so all `len` values are initialised.
        unsafe { out.set_len(len) };
        Ok((
            CpuStorage::F32(out),
            Shape::from((b, conv.out_channels, oh, ow)),
        ))
    }
}
