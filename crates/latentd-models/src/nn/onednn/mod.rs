//! 2D convolutions through oneDNN (the `onednn` feature; Debian: `libdnnl-dev` to
//! build, `libdnnl2` to run): direct convolutions with this CPU's AVX-512 kernels
//! instead of an im2col copy and a matrix product.
//!
//! The weights are packed once, at load, into the blocked layout oneDNN's kernel
//! wants, and the original tensor is dropped, so memory does not grow. A layer's
//! output channels are cut into a fixed number of bands (set at load from the
//! thread count), and every (sample, band) pair is one task on the rayon pool with
//! oneDNN confined to the calling thread: a sample's arithmetic depends on its shape
//! alone, never on the batch it shares a call with.

mod ffi;

use std::cell::RefCell;
use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::Result;

/// The input size a layer's weight layout is chosen for; its kernel serves every size.
const LAYOUT_HINT: i32 = 32;
/// Input sizes one layer keeps plans for before it starts over.
const MAX_PLANS: usize = 32;
/// Bands of output channels are at least this wide.
const MIN_BAND: usize = 64;

/// Whether a convolution with this weight is packed for oneDNN: a plain float32
/// CPU tensor (a training variable keeps candle's differentiable path).
pub(crate) fn applies(weight: &Tensor) -> bool {
    weight.device().is_cpu() && weight.dtype() == DType::F32 && !weight.is_variable()
}

/// One band of a layer's output channels, its weights packed.
struct Band {
    weights: NonNull<ffi::Weights>,
    first: usize,
    len: usize,
}

// SAFETY: the packed weights are written once, in `ld_weights_pack`, and only read
// after (every function taking them takes a const pointer); they are freed once, on drop.
unsafe impl Send for Band {}
unsafe impl Sync for Band {}

impl Drop for Band {
    fn drop(&mut self) {
        // SAFETY: created by `ld_weights_pack`, freed only here.
        unsafe { ffi::ld_weights_free(self.weights.as_ptr()) }
    }
}

/// A band's convolution for one input size.
struct Plan {
    plan: NonNull<ffi::Plan>,
    scratch_bytes: usize,
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

/// The plans of every band for one input size; `None` where oneDNN had no kernel.
type Plans = Option<Arc<Vec<Plan>>>;

/// A convolution with its weights packed for oneDNN.
pub(crate) struct PackedConv {
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    bands: Vec<Band>,
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
            .field("bands", &self.bands.len())
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

/// How many bands a layer with `out_channels` outputs is cut into.
fn band_count(out_channels: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    (out_channels / MIN_BAND).clamp(1, threads)
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
        let per_out = in_channels * kernel * kernel;
        let count = band_count(out_channels);
        // Bands of a multiple of 16 channels (the kernels' blocking), the last shorter.
        let width = out_channels.div_ceil(count).div_ceil(16) * 16;
        let mut bands = Vec::with_capacity(count);
        for first in (0..out_channels).step_by(width.max(1)) {
            let len = width.min(out_channels - first);
            let slice = &data[first * per_out..(first + len) * per_out];
            let mut packed = std::ptr::null_mut();
            // SAFETY: `slice` holds `len * per_out` floats in OIHW order, as declared.
            let rc = unsafe {
                ffi::ld_weights_pack(
                    to_i32(len)?,
                    to_i32(in_channels)?,
                    to_i32(kernel)?,
                    to_i32(stride)?,
                    to_i32(padding)?,
                    i32::from(bias.is_some()),
                    LAYOUT_HINT,
                    slice.as_ptr(),
                    &mut packed,
                )
            };
            status(rc, "packing a convolution's weights")?;
            let weights = NonNull::new(packed)
                .ok_or_else(|| candle_core::Error::Msg("oneDNN: no weights".into()))?;
            bands.push(Band {
                weights,
                first,
                len,
            });
        }
        Ok(Self {
            in_channels,
            out_channels,
            kernel,
            stride,
            padding,
            bands,
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

    /// The plans for an `h x w` input, made on first use.
    fn plans(&self, h: usize, w: usize) -> candle_core::Result<Plans> {
        let mut cache = self
            .plans
            .lock()
            .map_err(|_| candle_core::Error::Msg("oneDNN: a plan cache was poisoned".into()))?;
        if let Some(plans) = cache.get(&(h, w)) {
            return Ok(plans.clone());
        }
        let mut made = Vec::with_capacity(self.bands.len());
        for band in &self.bands {
            let mut plan = std::ptr::null_mut();
            // SAFETY: the band's weights are alive; `plan` receives a new plan or stays null.
            let rc = unsafe {
                ffi::ld_plan_create(band.weights.as_ptr(), to_i32(h)?, to_i32(w)?, &mut plan)
            };
            match NonNull::new(plan) {
                Some(plan) if rc == 0 => {
                    // SAFETY: a plan just created.
                    let scratch_bytes = unsafe { ffi::ld_plan_scratch_bytes(plan.as_ptr()) };
                    made.push(Plan {
                        plan,
                        scratch_bytes,
                    });
                }
                _ => {
                    tracing::debug!(rc, h, w, "oneDNN has no kernel for this convolution");
                    made.clear();
                    break;
                }
            }
        }
        let plans = (made.len() == self.bands.len()).then(|| Arc::new(made));
        if cache.len() >= MAX_PLANS {
            cache.clear();
        }
        cache.insert((h, w), plans.clone());
        Ok(plans)
    }

    /// The name of the kernel used for an `h x w` input, if oneDNN has one.
    pub(crate) fn kernel_name(&self, h: usize, w: usize) -> Result<Option<String>> {
        Ok(self
            .plans(h, w)?
            .and_then(|plans| plans.first().map(Plan::kernel_name)))
    }

    /// candle's convolution on the weights unpacked from oneDNN's layout.
    fn fallback(&self) -> candle_core::Result<&candle_nn::Conv2d> {
        if let Some(conv) = self.fallback.get() {
            return Ok(conv);
        }
        let per_out = self.in_channels * self.kernel * self.kernel;
        let mut data = vec![0f32; self.out_channels * per_out];
        for band in &self.bands {
            let out = &mut data[band.first * per_out..(band.first + band.len) * per_out];
            // SAFETY: `out` has room for the band's OIHW weights.
            let rc = unsafe { ffi::ld_weights_unpack(band.weights.as_ptr(), out.as_mut_ptr()) };
            status(rc, "unpacking a convolution's weights")?;
        }
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
    /// depend on its batch here either).
    fn forward_fallback(&self, xs: &Tensor) -> Result<Tensor> {
        use candle_core::Module;
        let conv = self.fallback()?;
        let b = xs.dim(0)?;
        let weight_dtype = conv.weight().dtype();
        let run = |x: &Tensor| -> candle_core::Result<Tensor> {
            conv.forward(&x.to_dtype(weight_dtype)?)?
                .to_dtype(x.dtype())
        };
        if b <= 1 {
            return Ok(run(xs)?);
        }
        let samples = (0..b)
            .map(|i| run(&xs.narrow(0, i, 1)?))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::cat(&samples, 0)?)
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
    /// oneDNN's working memory (blocked copies of input and output, its scratchpad),
    /// kept between calls on the thread that makes them.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Alignment oneDNN's kernels want for their buffers.
const ALIGN: usize = 64;

/// One forward call: a layer and its plans for the input's size.
struct Forward<'a> {
    conv: &'a PackedConv,
    plans: Arc<Vec<Plan>>,
}

impl Forward<'_> {
    /// Runs one band's plan on one sample, into `dst` (the band's channels of the sample).
    fn run(&self, band: usize, src: &[f32], dst: &mut [f32]) -> candle_core::Result<()> {
        let plan = &self.plans[band];
        let weights = &self.conv.bands[band];
        let bias = self
            .conv
            .bias
            .as_ref()
            .map(|b| b[weights.first..weights.first + weights.len].as_ptr())
            .unwrap_or(std::ptr::null());
        SCRATCH.with(|cell| {
            let mut fresh = Vec::new();
            let mut held = cell.try_borrow_mut();
            let buffer: &mut Vec<u8> = match held.as_mut() {
                Ok(held) => held,
                Err(_) => &mut fresh,
            };
            if buffer.len() < plan.scratch_bytes + ALIGN {
                buffer.resize(plan.scratch_bytes + ALIGN, 0);
            }
            let skip = buffer.as_ptr().align_offset(ALIGN);
            let scratch = buffer[skip..].as_mut_ptr();
            // SAFETY: `src` and `dst` hold one sample's input and this band's output in
            // NCHW, as the plan was made for; `bias` has the band's `len` values or is
            // null; `scratch` is aligned and `scratch_bytes` long; the weights are alive.
            let rc = unsafe {
                ffi::ld_plan_run(
                    plan.plan.as_ptr(),
                    weights.weights.as_ptr(),
                    src.as_ptr(),
                    bias,
                    dst.as_mut_ptr(),
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
        let mut out = vec![0f32; b * per_out];
        // Every (sample, band) pair with its disjoint slice of the output.
        let mut tasks = Vec::with_capacity(b * conv.bands.len());
        for (sample, mut rest) in out.chunks_mut(per_out.max(1)).enumerate() {
            for (band, weights) in conv.bands.iter().enumerate() {
                let (dst, tail) = std::mem::take(&mut rest).split_at_mut(weights.len * oh * ow);
                tasks.push((sample, band, dst));
                rest = tail;
            }
        }
        tasks.into_par_iter().try_for_each(|(sample, band, dst)| {
            self.run(band, &x[sample * per_in..(sample + 1) * per_in], dst)
        })?;
        Ok((
            CpuStorage::F32(out),
            Shape::from((b, conv.out_channels, oh, ow)),
        ))
    }
}
