//! The C functions of `shim.c` (compiled by `build.rs`, linked with oneDNN).

/// Packed weights of one convolution (opaque).
#[repr(C)]
pub(super) struct Weights {
    _private: [u8; 0],
}

/// One convolution for one input size (opaque).
#[repr(C)]
pub(super) struct Plan {
    _private: [u8; 0],
}

/// One matrix product for fixed shapes and strides (opaque).
#[repr(C)]
pub(super) struct Matmul {
    _private: [u8; 0],
}

extern "C" {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn ld_matmul_create(
        m: i64,
        n: i64,
        k: i64,
        a_rs: i64,
        a_cs: i64,
        b_rs: i64,
        b_cs: i64,
        ldc: i64,
        out: *mut *mut Matmul,
    ) -> i32;
    pub(super) fn ld_matmul_scratch_bytes(product: *const Matmul) -> usize;
    #[cfg(test)]
    pub(super) fn ld_matmul_impl(product: *const Matmul) -> *const std::ffi::c_char;
    pub(super) fn ld_matmul_run(
        product: *const Matmul,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        scratch: *mut std::ffi::c_void,
    ) -> i32;
    pub(super) fn ld_matmul_free(product: *mut Matmul);

    #[allow(clippy::too_many_arguments)]
    pub(super) fn ld_weights_pack(
        oc: i32,
        ic: i32,
        k: i32,
        stride: i32,
        pad: i32,
        has_bias: i32,
        hint: i32,
        oihw: *const f32,
        out: *mut *mut Weights,
    ) -> i32;
    pub(super) fn ld_weights_unpack(weights: *const Weights, oihw: *mut f32) -> i32;
    pub(super) fn ld_weights_free(weights: *mut Weights);
    #[allow(clippy::too_many_arguments)]
    pub(super) fn ld_plan_create(
        weights: *const Weights,
        h: i32,
        w: i32,
        rows: i32,
        pad_top: i32,
        pad_bottom: i32,
        oh: i32,
        out: *mut *mut Plan,
    ) -> i32;
    pub(super) fn ld_plan_impl(plan: *const Plan) -> *const std::ffi::c_char;
    pub(super) fn ld_plan_accepts(plan: *const Plan, weights: *const Weights) -> i32;
    pub(super) fn ld_weights_repack(
        from: *const Weights,
        plan: *const Plan,
        out: *mut *mut Weights,
    ) -> i32;
    pub(super) fn ld_plan_scratch_bytes(plan: *const Plan) -> usize;
    pub(super) fn ld_plan_run(
        plan: *const Plan,
        weights: *const Weights,
        src: *const f32,
        bias: *const f32,
        dst: *mut f32,
        scratch: *mut std::ffi::c_void,
    ) -> i32;
    pub(super) fn ld_plan_free(plan: *mut Plan);
}
