//! Single-precision matrix products through oneDNN's matmul, one product on the
//! calling thread: what the OpenBLAS module's GEMM tasks call where this feature is
//! on. oneDNN's AVX-512 kernels run the model's products 10-40% faster than OpenBLAS
//! on one thread (most on the text encoder's 77-row products; BENCHMARKS.md).
//!
//! A product is made once per shape and strides (kept in a process-wide table) and
//! reads its operands in place, transposed views included; its arithmetic depends on
//! its shape alone, so the GEMM tasks' batch invariance holds as with OpenBLAS.

use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, OnceLock};

use super::{ffi, status, with_buffer, ALIGN, SCRATCH};

/// One matrix product's shape and strides (in elements).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Product {
    /// Rows of A and C.
    pub m: usize,
    /// Columns of B and C.
    pub n: usize,
    /// Columns of A, rows of B.
    pub k: usize,
    /// A's strides: between rows, between columns.
    pub a: (usize, usize),
    /// B's strides: between rows, between columns.
    pub b: (usize, usize),
    /// C's row stride (its columns are contiguous).
    pub ldc: usize,
}

/// Products kept at most; past it the table starts again (products in use live on).
const MAX_PRODUCTS: usize = 4096;

/// A made product (oneDNN's primitive, which may run on several threads at once,
/// each with its own scratch memory).
struct Matmul {
    handle: NonNull<ffi::Matmul>,
    scratch_bytes: usize,
}

// SAFETY: a oneDNN primitive is immutable once made and may execute concurrently
// from several threads; each call passes its own scratch memory.
unsafe impl Send for Matmul {}
unsafe impl Sync for Matmul {}

impl Drop for Matmul {
    fn drop(&mut self) {
        // SAFETY: made by `ld_matmul_create`, freed once, here.
        unsafe { ffi::ld_matmul_free(self.handle.as_ptr()) }
    }
}

fn table() -> &'static Mutex<HashMap<Product, Arc<Matmul>>> {
    static TABLE: OnceLock<Mutex<HashMap<Product, Arc<Matmul>>>> = OnceLock::new();
    TABLE.get_or_init(Default::default)
}

fn dim(n: usize) -> candle_core::Result<i64> {
    i64::try_from(n).map_err(|_| candle_core::Error::Msg(format!("oneDNN: {n} is too large")))
}

/// The made product for `p`, from the table or made now.
fn made(p: Product) -> candle_core::Result<Arc<Matmul>> {
    let lock = |t: &'static Mutex<HashMap<Product, Arc<Matmul>>>| {
        t.lock().unwrap_or_else(|e| e.into_inner())
    };
    if let Some(found) = lock(table()).get(&p) {
        return Ok(found.clone());
    }
    let mut handle = std::ptr::null_mut();
    // SAFETY: plain numbers in, a new product out.
    let rc = unsafe {
        ffi::ld_matmul_create(
            dim(p.m)?,
            dim(p.n)?,
            dim(p.k)?,
            dim(p.a.0)?,
            dim(p.a.1)?,
            dim(p.b.0)?,
            dim(p.b.1)?,
            dim(p.ldc)?,
            &mut handle,
        )
    };
    status(rc, "making a matrix product")?;
    let handle = NonNull::new(handle)
        .ok_or_else(|| candle_core::Error::Msg("oneDNN: no matrix product made".into()))?;
    // SAFETY: a product just made.
    let scratch_bytes = unsafe { ffi::ld_matmul_scratch_bytes(handle.as_ptr()) };
    let made = Arc::new(Matmul {
        handle,
        scratch_bytes,
    });
    let mut table = lock(table());
    if table.len() >= MAX_PRODUCTS {
        table.clear();
    }
    Ok(table.entry(p).or_insert(made).clone())
}

/// `C = A x B` on the calling thread, for the shape and strides `p`.
///
/// # Safety
/// `a`, `b` and `c` must hold the matrices `p` describes, and no other thread may
/// touch the part of `c` the product writes while it runs.
pub(crate) unsafe fn sgemm(
    p: Product,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
) -> candle_core::Result<()> {
    if p.m == 0 || p.n == 0 {
        return Ok(());
    }
    if p.k == 0 {
        for row in 0..p.m {
            // SAFETY: the caller's promise for `c`.
            unsafe { std::ptr::write_bytes(c.add(row * p.ldc), 0, p.n) };
        }
        return Ok(());
    }
    let product = made(p)?;
    with_buffer(&SCRATCH, product.scratch_bytes + ALIGN, |buffer| {
        let skip = buffer.as_ptr().align_offset(ALIGN);
        let scratch = buffer[skip..].as_mut_ptr();
        // SAFETY: the caller's promise for the operands; `scratch` is aligned and
        // `scratch_bytes` long.
        let rc = unsafe { ffi::ld_matmul_run(product.handle.as_ptr(), a, b, c, scratch.cast()) };
        status(rc, "a matrix product")
    })
}

/// The kernel oneDNN picked for `p` (for tests and benchmarks).
#[cfg(test)]
pub(crate) fn kernel_name(p: Product) -> candle_core::Result<String> {
    let product = made(p)?;
    // SAFETY: a live product; the name is a C string it owns.
    let name = unsafe { std::ffi::CStr::from_ptr(ffi::ld_matmul_impl(product.handle.as_ptr())) };
    Ok(name.to_string_lossy().into_owned())
}
