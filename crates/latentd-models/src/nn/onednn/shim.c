/* latentd's bridge to oneDNN (C API 2.x) for 2D convolutions in f32.
 *
 * Weights are packed at load into the blocked layout oneDNN's fastest kernel
 * for the layer asks for. A plan is the convolution for one input size, plus the
 * reorders between candle's NCHW and the kernel's layouts; where its kernel wants
 * the weights in another layout, they are repacked once for it (ld_weights_repack). Every call runs on the calling thread (OpenMP limited to one
 * thread there) with caller-owned scratch memory, so plans may run concurrently
 * and a sample's arithmetic depends only on its shape. */
#include <oneapi/dnnl/dnnl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

extern void omp_set_num_threads(int);

#define LD_ALIGN 64
#define CHECK(call)                                                            \
    do {                                                                       \
        dnnl_status_t status_ = (call);                                        \
        if (status_ != dnnl_success) return (int)status_;                      \
    } while (0)

static dnnl_engine_t g_engine;
static dnnl_status_t g_engine_status = dnnl_runtime_error;
static pthread_once_t g_engine_once = PTHREAD_ONCE_INIT;

static void engine_init(void) {
    g_engine_status = dnnl_engine_create(&g_engine, dnnl_cpu, 0);
}

static int engine(dnnl_engine_t *out) {
    pthread_once(&g_engine_once, engine_init);
    if (g_engine_status != dnnl_success) return (int)g_engine_status;
    *out = g_engine;
    return 0;
}

static __thread dnnl_stream_t tls_stream;

static int stream(dnnl_stream_t *out) {
    if (!tls_stream) {
        dnnl_engine_t eng;
        int rc = engine(&eng);
        if (rc) return rc;
        CHECK(dnnl_stream_create(&tls_stream, eng, dnnl_stream_default_flags));
    }
    *out = tls_stream;
    return 0;
}

/* The engine and this thread's stream, with OpenMP held to this thread: what a run
 * on the calling thread needs. */
static int calling_thread(dnnl_engine_t *eng, dnnl_stream_t *str) {
    omp_set_num_threads(1);
    int rc = engine(eng);
    if (rc) return rc;
    return stream(str);
}

static size_t round_up(size_t n) { return (n + LD_ALIGN - 1) / LD_ALIGN * LD_ALIGN; }

/* Packed weights of one convolution (or one band of its output channels). */
typedef struct ld_weights {
    int oc, ic, k, stride, pad, has_bias;
    dnnl_memory_desc_t md;
    void *data;
} ld_weights;

/* One convolution for one input size. */
typedef struct ld_plan {
    int oh, ow;
    dnnl_primitive_t conv, src_reorder, dst_reorder;
    dnnl_memory_desc_t src_plain, src_md, dst_plain, dst_md, bias_md, wei_md;
    size_t src_bytes, dst_bytes, scratch_bytes;
    char impl[64];
} ld_plan;

static int out_size(int in, int k, int stride, int pad) {
    return (in + 2 * pad - k) / stride + 1;
}

/* A convolution descriptor for `rows` input rows of width `w` with `pad_top` and
 * `pad_bottom` rows of zeros around them (a band of a larger image, or all of it);
 * src and dst in any layout, weights `wei` (NULL: any). */
static int conv_desc(dnnl_convolution_desc_t *cd, const ld_weights *wt, int rows, int w,
                     int pad_top, int pad_bottom, const dnnl_memory_desc_t *wei,
                     dnnl_memory_desc_t *bias_md) {
    int oh = (rows + pad_top + pad_bottom - wt->k) / wt->stride + 1;
    int ow = out_size(w, wt->k, wt->stride, wt->pad);
    if (rows <= 0 || rows + pad_top + pad_bottom < wt->k || oh <= 0 || ow <= 0)
        return (int)dnnl_invalid_arguments;
    dnnl_dims_t src_dims = {1, wt->ic, rows, w};
    dnnl_dims_t dst_dims = {1, wt->oc, oh, ow};
    dnnl_dims_t wei_dims = {wt->oc, wt->ic, wt->k, wt->k};
    dnnl_dims_t bias_dims = {wt->oc};
    dnnl_dims_t strides = {wt->stride, wt->stride};
    dnnl_dims_t pads_l = {pad_top, wt->pad};
    dnnl_dims_t pads_r = {pad_bottom, wt->pad};
    dnnl_memory_desc_t src_md, dst_md, wei_any;
    CHECK(dnnl_memory_desc_init_by_tag(&src_md, 4, src_dims, dnnl_f32, dnnl_format_tag_any));
    CHECK(dnnl_memory_desc_init_by_tag(&dst_md, 4, dst_dims, dnnl_f32, dnnl_format_tag_any));
    CHECK(dnnl_memory_desc_init_by_tag(&wei_any, 4, wei_dims, dnnl_f32, dnnl_format_tag_any));
    CHECK(dnnl_memory_desc_init_by_tag(bias_md, 1, bias_dims, dnnl_f32, dnnl_x));
    CHECK(dnnl_convolution_forward_desc_init(
        cd, dnnl_forward_inference, dnnl_convolution_direct, &src_md, wei ? wei : &wei_any,
        wt->has_bias ? bias_md : NULL, &dst_md, strides, pads_l, pads_r));
    return 0;
}

static int user_scratchpad_attr(dnnl_primitive_attr_t *attr) {
    CHECK(dnnl_primitive_attr_create(attr));
    dnnl_status_t st = dnnl_primitive_attr_set_scratchpad_mode(*attr, dnnl_scratchpad_mode_user);
    if (st != dnnl_success) {
        dnnl_primitive_attr_destroy(*attr);
        return (int)st;
    }
    return 0;
}

static int reorder(const dnnl_memory_desc_t *from, void *from_data, const dnnl_memory_desc_t *to,
                   void *to_data) {
    dnnl_engine_t eng;
    dnnl_stream_t str;
    int rc = engine(&eng);
    if (rc) return rc;
    rc = stream(&str);
    if (rc) return rc;
    dnnl_primitive_desc_t pd;
    CHECK(dnnl_reorder_primitive_desc_create(&pd, from, eng, to, eng, NULL));
    dnnl_primitive_t prim;
    dnnl_status_t st = dnnl_primitive_create(&prim, pd);
    dnnl_primitive_desc_destroy(pd);
    if (st != dnnl_success) return (int)st;
    dnnl_memory_t a = NULL, b = NULL;
    st = dnnl_memory_create(&a, from, eng, from_data);
    if (st == dnnl_success) st = dnnl_memory_create(&b, to, eng, to_data);
    if (st == dnnl_success) {
        dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, a}, {DNNL_ARG_TO, b}};
        st = dnnl_primitive_execute(prim, str, 2, args);
        if (st == dnnl_success) st = dnnl_stream_wait(str);
    }
    if (a) dnnl_memory_destroy(a);
    if (b) dnnl_memory_destroy(b);
    dnnl_primitive_destroy(prim);
    return (int)st;
}

/* `*wt` with its data made anew in layout `md`, reordered from `from_data` in
 * layout `from`. */
static int pack_into(ld_weights *wt, const dnnl_memory_desc_t *md, const dnnl_memory_desc_t *from,
                     const void *from_data) {
    wt->md = *md;
    size_t bytes = round_up(dnnl_memory_desc_get_size(md));
    wt->data = aligned_alloc(LD_ALIGN, bytes);
    if (!wt->data) return (int)dnnl_out_of_memory;
    memset(wt->data, 0, bytes);
    return reorder(from, (void *)from_data, md, wt->data);
}

int ld_weights_pack(int oc, int ic, int k, int stride, int pad, int has_bias, int hint,
                    const float *oihw, ld_weights **out) {
    omp_set_num_threads(1);
    dnnl_engine_t eng;
    int rc = engine(&eng);
    if (rc) return rc;
    ld_weights *wt = calloc(1, sizeof *wt);
    if (!wt) return (int)dnnl_out_of_memory;
    wt->oc = oc, wt->ic = ic, wt->k = k, wt->stride = stride, wt->pad = pad;
    wt->has_bias = has_bias;
    int side = hint > k ? hint : k;
    dnnl_convolution_desc_t cd;
    dnnl_memory_desc_t bias_md;
    dnnl_primitive_attr_t attr;
    dnnl_primitive_desc_t pd = NULL;
    rc = conv_desc(&cd, wt, side, side, pad, pad, NULL, &bias_md);
    if (!rc) rc = user_scratchpad_attr(&attr);
    if (!rc) {
        rc = (int)dnnl_primitive_desc_create(&pd, &cd, attr, eng, NULL);
        dnnl_primitive_attr_destroy(attr);
    }
    if (!rc) {
        dnnl_memory_desc_t packed = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
        dnnl_primitive_desc_destroy(pd);
        dnnl_dims_t dims = {oc, ic, k, k};
        dnnl_memory_desc_t plain;
        rc = (int)dnnl_memory_desc_init_by_tag(&plain, 4, dims, dnnl_f32, dnnl_oihw);
        if (!rc) rc = pack_into(wt, &packed, &plain, oihw);
    }
    if (rc) {
        free(wt->data);
        free(wt);
        return rc;
    }
    *out = wt;
    return 0;
}

int ld_weights_unpack(const ld_weights *wt, float *oihw) {
    dnnl_dims_t dims = {wt->oc, wt->ic, wt->k, wt->k};
    dnnl_memory_desc_t plain;
    CHECK(dnnl_memory_desc_init_by_tag(&plain, 4, dims, dnnl_f32, dnnl_oihw));
    return reorder(&wt->md, wt->data, &plain, oihw);
}

void ld_weights_free(ld_weights *wt) {
    if (!wt) return;
    free(wt->data);
    free(wt);
}

/* A reorder primitive between two layouts, or NULL where they are the same. */
static int maybe_reorder(const dnnl_memory_desc_t *from, const dnnl_memory_desc_t *to,
                         dnnl_primitive_t *out, size_t *scratch) {
    *out = NULL;
    if (dnnl_memory_desc_equal(from, to)) return 0;
    dnnl_engine_t eng;
    int rc = engine(&eng);
    if (rc) return rc;
    dnnl_primitive_attr_t attr;
    rc = user_scratchpad_attr(&attr);
    if (rc) return rc;
    dnnl_primitive_desc_t pd;
    dnnl_status_t st = dnnl_reorder_primitive_desc_create(&pd, from, eng, to, eng, attr);
    dnnl_primitive_attr_destroy(attr);
    if (st != dnnl_success) return (int)st;
    size_t need = dnnl_memory_desc_get_size(dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0));
    if (need > *scratch) *scratch = need;
    st = dnnl_primitive_create(out, pd);
    dnnl_primitive_desc_destroy(pd);
    return (int)st;
}

void ld_plan_free(ld_plan *p) {
    if (!p) return;
    if (p->conv) dnnl_primitive_destroy(p->conv);
    if (p->src_reorder) dnnl_primitive_destroy(p->src_reorder);
    if (p->dst_reorder) dnnl_primitive_destroy(p->dst_reorder);
    free(p);
}

/* A plan for a band of `rows` input rows, with `pad_top` and `pad_bottom` rows of
 * zero padding, of an image `h` rows high and `w` wide; its output rows belong to an
 * output `oh` rows high. The plain NCHW views of input and output have the whole
 * images' strides, so a band reads and writes the images in place (the caller
 * offsets the pointers to the band's first rows). */
int ld_plan_create(const ld_weights *wt, int h, int w, int rows, int pad_top, int pad_bottom,
                   int oh, ld_plan **out) {
    omp_set_num_threads(1);
    dnnl_engine_t eng;
    int rc = engine(&eng);
    if (rc) return rc;
    ld_plan *p = calloc(1, sizeof *p);
    if (!p) return (int)dnnl_out_of_memory;
    p->oh = (rows + pad_top + pad_bottom - wt->k) / wt->stride + 1;
    p->ow = out_size(w, wt->k, wt->stride, wt->pad);
    dnnl_convolution_desc_t cd;
    dnnl_primitive_attr_t attr;
    dnnl_primitive_desc_t pd = NULL;
    rc = conv_desc(&cd, wt, rows, w, pad_top, pad_bottom, NULL, &p->bias_md);
    if (!rc && (rows > h || p->oh > oh)) rc = (int)dnnl_invalid_arguments;
    if (!rc) rc = user_scratchpad_attr(&attr);
    if (!rc) {
        rc = (int)dnnl_primitive_desc_create(&pd, &cd, attr, eng, NULL);
        dnnl_primitive_attr_destroy(attr);
    }
    if (!rc) {
        const char *impl = NULL;
        if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success && impl)
            strncpy(p->impl, impl, sizeof p->impl - 1);
        p->src_md = *dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
        p->dst_md = *dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
        p->wei_md = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
        p->scratch_bytes =
            dnnl_memory_desc_get_size(dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0));
    }
    if (!rc) rc = (int)dnnl_primitive_create(&p->conv, pd);
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (!rc) {
        dnnl_dims_t src_dims = {1, wt->ic, rows, w};
        dnnl_dims_t src_strides = {(dnnl_dim_t)wt->ic * h * w, (dnnl_dim_t)h * w, w, 1};
        dnnl_dims_t dst_dims = {1, wt->oc, p->oh, p->ow};
        dnnl_dims_t dst_strides = {(dnnl_dim_t)wt->oc * oh * p->ow, (dnnl_dim_t)oh * p->ow, p->ow, 1};
        rc = (int)dnnl_memory_desc_init_by_strides(&p->src_plain, 4, src_dims, dnnl_f32, src_strides);
        if (!rc)
            rc = (int)dnnl_memory_desc_init_by_strides(&p->dst_plain, 4, dst_dims, dnnl_f32, dst_strides);
    }
    if (!rc) rc = maybe_reorder(&p->src_plain, &p->src_md, &p->src_reorder, &p->scratch_bytes);
    if (!rc) rc = maybe_reorder(&p->dst_md, &p->dst_plain, &p->dst_reorder, &p->scratch_bytes);
    if (rc) {
        ld_plan_free(p);
        return rc;
    }
    p->src_bytes = p->src_reorder ? round_up(dnnl_memory_desc_get_size(&p->src_md)) : 0;
    p->dst_bytes = p->dst_reorder ? round_up(dnnl_memory_desc_get_size(&p->dst_md)) : 0;
    p->scratch_bytes = round_up(p->scratch_bytes);
    *out = p;
    return 0;
}

const char *ld_plan_impl(const ld_plan *p) { return p->impl; }

/* Whether the plan's kernel takes these weights as they are packed. */
int ld_plan_accepts(const ld_plan *p, const ld_weights *wt) {
    return dnnl_memory_desc_equal(&p->wei_md, &wt->md);
}

/* The weights `from`, packed again in the layout the plan's kernel wants. */
int ld_weights_repack(const ld_weights *from, const ld_plan *p, ld_weights **out) {
    ld_weights *wt = calloc(1, sizeof *wt);
    if (!wt) return (int)dnnl_out_of_memory;
    *wt = *from;
    wt->data = NULL;
    int rc = pack_into(wt, &p->wei_md, &from->md, from->data);
    if (rc) {
        free(wt->data);
        free(wt);
        return rc;
    }
    *out = wt;
    return 0;
}

size_t ld_plan_scratch_bytes(const ld_plan *p) {
    return p->src_bytes + p->dst_bytes + p->scratch_bytes;
}

/* Runs the plan on one band of one sample: `src` and `dst` point at the band's first
 * input and output rows in NCHW images of the plan's sizes, `bias` [oc] or NULL,
 * `scratch` 64-byte aligned and ld_plan_scratch_bytes long; the plan must accept
 * `wt` (ld_plan_accepts). */
int ld_plan_run(const ld_plan *p, const ld_weights *wt, const float *src, const float *bias,
                float *dst, void *scratch) {
    if (!ld_plan_accepts(p, wt)) return (int)dnnl_invalid_arguments;
    dnnl_engine_t eng;
    dnnl_stream_t str;
    int rc = calling_thread(&eng, &str);
    if (rc) return rc;
    char *base = scratch;
    void *src_blocked = p->src_reorder ? base : (void *)src;
    void *dst_blocked = p->dst_reorder ? base + p->src_bytes : (void *)dst;
    void *pad = p->scratch_bytes ? base + p->src_bytes + p->dst_bytes : NULL;
    enum { N = 7 };
    dnnl_memory_t m[N] = {0};
    dnnl_status_t st = dnnl_memory_create(&m[0], &p->src_plain, eng, (void *)src);
    if (st == dnnl_success) st = dnnl_memory_create(&m[1], &p->src_md, eng, src_blocked);
    if (st == dnnl_success) st = dnnl_memory_create(&m[2], &p->wei_md, eng, wt->data);
    if (st == dnnl_success && bias) st = dnnl_memory_create(&m[3], &p->bias_md, eng, (void *)bias);
    if (st == dnnl_success) st = dnnl_memory_create(&m[4], &p->dst_md, eng, dst_blocked);
    if (st == dnnl_success) st = dnnl_memory_create(&m[5], &p->dst_plain, eng, dst);
    if (st == dnnl_success && pad) {
        dnnl_memory_desc_t pad_md;
        dnnl_dims_t dims = {(dnnl_dim_t)p->scratch_bytes};
        st = dnnl_memory_desc_init_by_tag(&pad_md, 1, dims, dnnl_u8, dnnl_x);
        if (st == dnnl_success) st = dnnl_memory_create(&m[6], &pad_md, eng, pad);
    }
    if (st == dnnl_success && p->src_reorder) {
        dnnl_exec_arg_t args[3] = {{DNNL_ARG_FROM, m[0]}, {DNNL_ARG_TO, m[1]}, {DNNL_ARG_SCRATCHPAD, m[6]}};
        st = dnnl_primitive_execute(p->src_reorder, str, pad ? 3 : 2, args);
    }
    if (st == dnnl_success) {
        dnnl_exec_arg_t args[5] = {{DNNL_ARG_SRC, m[1]}, {DNNL_ARG_WEIGHTS, m[2]}, {DNNL_ARG_DST, m[4]}};
        int n = 3;
        if (pad) args[n++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, m[6]};
        if (bias) args[n++] = (dnnl_exec_arg_t){DNNL_ARG_BIAS, m[3]};
        st = dnnl_primitive_execute(p->conv, str, n, args);
    }
    if (st == dnnl_success && p->dst_reorder) {
        dnnl_exec_arg_t args[3] = {{DNNL_ARG_FROM, m[4]}, {DNNL_ARG_TO, m[5]}, {DNNL_ARG_SCRATCHPAD, m[6]}};
        st = dnnl_primitive_execute(p->dst_reorder, str, pad ? 3 : 2, args);
    }
    if (st == dnnl_success) st = dnnl_stream_wait(str);
    for (int i = 0; i < N; i++)
        if (m[i]) dnnl_memory_destroy(m[i]);
    return (int)st;
}

/* One single-precision matrix product C[m, n] = A[m, k] x B[k, n] for fixed shapes
 * and strides (plain layouts, any strides: transposed views included), C row-major
 * with leading dimension ldc. Run on the calling thread with caller-owned scratch
 * memory, like the convolutions. */
typedef struct ld_matmul {
    dnnl_primitive_t prim;
    dnnl_memory_desc_t a_md, b_md, c_md;
    size_t scratch_bytes;
    char impl[64];
} ld_matmul;

int ld_matmul_create(long m, long n, long k, long a_rs, long a_cs, long b_rs, long b_cs,
                     long ldc, ld_matmul **out) {
    dnnl_engine_t eng;
    int rc = engine(&eng);
    if (rc) return rc;
    ld_matmul *p = calloc(1, sizeof *p);
    if (!p) return (int)dnnl_out_of_memory;
    dnnl_dims_t a_dims = {m, k}, b_dims = {k, n}, c_dims = {m, n};
    dnnl_dims_t a_strides = {a_rs, a_cs}, b_strides = {b_rs, b_cs}, c_strides = {ldc, 1};
    dnnl_status_t st = dnnl_memory_desc_init_by_strides(&p->a_md, 2, a_dims, dnnl_f32, a_strides);
    if (st == dnnl_success)
        st = dnnl_memory_desc_init_by_strides(&p->b_md, 2, b_dims, dnnl_f32, b_strides);
    if (st == dnnl_success)
        st = dnnl_memory_desc_init_by_strides(&p->c_md, 2, c_dims, dnnl_f32, c_strides);
    dnnl_matmul_desc_t md;
    if (st == dnnl_success) st = dnnl_matmul_desc_init(&md, &p->a_md, &p->b_md, NULL, &p->c_md);
    dnnl_primitive_desc_t pd = NULL;
    if (st == dnnl_success) {
        dnnl_primitive_attr_t attr;
        rc = user_scratchpad_attr(&attr);
        if (rc) {
            free(p);
            return rc;
        }
        st = dnnl_primitive_desc_create(&pd, &md, attr, eng, NULL);
        dnnl_primitive_attr_destroy(attr);
    }
    if (st == dnnl_success) {
        p->scratch_bytes = round_up(
            dnnl_memory_desc_get_size(dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0)));
        const char *impl = NULL;
        if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success && impl)
            strncpy(p->impl, impl, sizeof p->impl - 1);
        st = dnnl_primitive_create(&p->prim, pd);
    }
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (st != dnnl_success) {
        free(p);
        return (int)st;
    }
    *out = p;
    return 0;
}

size_t ld_matmul_scratch_bytes(const ld_matmul *p) { return p->scratch_bytes; }

const char *ld_matmul_impl(const ld_matmul *p) { return p->impl; }

/* Runs the product on the calling thread: `a`, `b` and `c` hold the matrices the
 * product was made for, `scratch` is 64-byte aligned and ld_matmul_scratch_bytes long. */
int ld_matmul_run(const ld_matmul *p, const float *a, const float *b, float *c, void *scratch) {
    dnnl_engine_t eng;
    dnnl_stream_t str;
    int rc = calling_thread(&eng, &str);
    if (rc) return rc;
    enum { N = 4 };
    dnnl_memory_t mem[N] = {0};
    dnnl_status_t st = dnnl_memory_create(&mem[0], &p->a_md, eng, (void *)a);
    if (st == dnnl_success) st = dnnl_memory_create(&mem[1], &p->b_md, eng, (void *)b);
    if (st == dnnl_success) st = dnnl_memory_create(&mem[2], &p->c_md, eng, c);
    if (st == dnnl_success && p->scratch_bytes) {
        dnnl_memory_desc_t pad_md;
        dnnl_dims_t dims = {(dnnl_dim_t)p->scratch_bytes};
        st = dnnl_memory_desc_init_by_tag(&pad_md, 1, dims, dnnl_u8, dnnl_x);
        if (st == dnnl_success) st = dnnl_memory_create(&mem[3], &pad_md, eng, scratch);
    }
    if (st == dnnl_success) {
        dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, mem[0]}, {DNNL_ARG_WEIGHTS, mem[1]},
                                   {DNNL_ARG_DST, mem[2]}, {DNNL_ARG_SCRATCHPAD, mem[3]}};
        st = dnnl_primitive_execute(p->prim, str, p->scratch_bytes ? 4 : 3, args);
    }
    if (st == dnnl_success) st = dnnl_stream_wait(str);
    for (int i = 0; i < N; i++)
        if (mem[i]) dnnl_memory_destroy(mem[i]);
    return (int)st;
}

void ld_matmul_free(ld_matmul *p) {
    if (!p) return;
    if (p->prim) dnnl_primitive_destroy(p->prim);
    free(p);
}
