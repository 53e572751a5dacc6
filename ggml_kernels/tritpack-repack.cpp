// CPU_TRITPACK: an extra CPU buffer type for TP1/TP4 weights (ggml-cpu's extra buffer type mechanism,
// traits.h). A weight placed in it is repacked while it is loaded (set_tensor writes the tiled layout
// of tritpack-gemm.c into the buffer: no second copy), and its MUL_MAT and MUL_MAT_ID run here: the
// activations are quantized once (TP4: Q8_0, TP1: TPQ16, the plain vec_dot's types), then every thread multiplies its share of the row tiles
// with all columns.
// Registered in ggml_backend_cpu_get_extra_buffer_types() by patch 0013; GGML_TRITPACK_NO_REPACK=1
// turns it off (the plain layout and vec_dot, for comparison).
#include "ggml-backend-impl.h"
#include "ggml-cpu.h"
#include "ggml-cpu-impl.h"
#include "ggml-impl.h"
#include "traits.h"

#include "tritpack-cpu.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

static bool ggml_tritpack_is_ours(ggml_type type) {
    return (int) type == TRITPACK_TYPE_TP1 || (int) type == TRITPACK_TYPE_TP4;
}

namespace ggml::cpu::tritpack {

class tensor_traits : public ggml::cpu::tensor_traits {
    bool work_size(int /* n_threads */, const struct ggml_tensor * op, size_t & size) override {
        const size_t by = ggml_tritpack_act_row_size(op->src[0]->type, op->src[1]->ne[0]);
        if (op->op == GGML_OP_MUL_MAT) {
            size = by * ggml_nrows(op->src[1]);
            return true;
        }
        if (op->op == GGML_OP_MUL_MAT_ID) {
            const int64_t n_as = op->src[0]->ne[2];
            const int64_t npairs = op->src[2]->ne[0] * op->src[2]->ne[1];  // (expert slot, token) pairs
            size = GGML_PAD(by * npairs, sizeof(int64_t)) + sizeof(int64_t)*(n_as + 1) + sizeof(int32_t)*2*npairs;
            return true;
        }
        return false;
    }

    bool compute_forward(struct ggml_compute_params * params, struct ggml_tensor * op) override {
        if (op->op == GGML_OP_MUL_MAT) {
            forward_mul_mat(params, op);
            return true;
        }
        if (op->op == GGML_OP_MUL_MAT_ID) {
            forward_mul_mat_id(params, op);
            return true;
        }
        return false;
    }

    // MUL_MAT_ID (mixture of experts): the (slot, token) pairs are sorted by expert, their activation
    // rows quantized in that order (so each expert's columns are contiguous), and each expert's row
    // tiles multiplied with its columns by the same kernels; results go back to dst[:, slot, token].
    static void forward_mul_mat_id(struct ggml_compute_params * params, struct ggml_tensor * op) {
        const ggml_tensor * src0 = op->src[0];
        const ggml_tensor * src1 = op->src[1];
        const ggml_tensor * ids  = op->src[2];
        ggml_tensor * dst = op;

        GGML_TENSOR_BINARY_OP_LOCALS

        GGML_ASSERT(src1->type == GGML_TYPE_F32 && ids->type == GGML_TYPE_I32);
        GGML_ASSERT(ne00 == ne10 && ne0 == ne01 && ne03 == 1 && ne13 == 1);
        GGML_ASSERT(nb0 == sizeof(float));

        const int ith = params->ith;
        const int nth = params->nth;
        const bool simd = !params->use_ref && ggml_tritpack_gemm_simd();

        const int64_t n_as   = ne02;
        const int64_t n_used = ids->ne[0];
        const int64_t n_tok  = ids->ne[1];
        const int64_t npairs = n_used*n_tok;
        const size_t by = ggml_tritpack_act_row_size(src0->type, ne10);

        char * wq = (char *) params->wdata;
        int64_t * off = (int64_t *) (wq + GGML_PAD(by*npairs, sizeof(int64_t)));  // n_as + 1 column offsets
        int32_t * map = (int32_t *) (off + n_as + 1);                               // pairs (slot, token) by expert
        GGML_ASSERT((char *) (map + 2*npairs) <= wq + params->wsize);

        if (ith == 0) {
            for (int64_t e = 0; e <= n_as; ++e) {
                off[e] = 0;
            }
            for (int64_t t = 0; t < n_tok; ++t) {
                for (int64_t i = 0; i < n_used; ++i) {
                    const int32_t e = *(const int32_t *) ((const char *) ids->data + i*ids->nb[0] + t*ids->nb[1]);
                    GGML_ASSERT(e >= 0 && e < n_as);
                    off[e + 1]++;
                }
            }
            for (int64_t e = 0; e < n_as; ++e) {
                off[e + 1] += off[e];
            }
            // fill, using off[e] as the cursor, then shift back
            for (int64_t t = 0; t < n_tok; ++t) {
                for (int64_t i = 0; i < n_used; ++i) {
                    const int32_t e = *(const int32_t *) ((const char *) ids->data + i*ids->nb[0] + t*ids->nb[1]);
                    const int64_t k = off[e]++;
                    map[2*k + 0] = (int32_t) i;
                    map[2*k + 1] = (int32_t) t;
                }
            }
            for (int64_t e = n_as; e > 0; --e) {
                off[e] = off[e - 1];
            }
            off[0] = 0;
        }
        ggml_barrier(params->threadpool);

        for (int64_t k = ith; k < npairs; k += nth) {
            const int64_t i = map[2*k + 0], t = map[2*k + 1];
            ggml_tritpack_quantize_act(src0->type, (const float *) ((const char *) src1->data + (i % ne11)*nb11 + t*nb12),
                                       wq + k*by, ne10, simd);
        }
        ggml_barrier(params->threadpool);

        const int64_t ntiles = ne01 / 8;
        const int64_t t0 = ntiles*ith / nth;
        const int64_t t1 = ntiles*(ith + 1) / nth;
        float tmp[32*8];
        for (int64_t e = 0; e < n_as; ++e) {
            const int64_t cnt = off[e + 1] - off[e];
            for (int64_t c0 = 0; c0 < cnt; c0 += 32) {
                const int nc = (int) (cnt - c0 < 32 ? cnt - c0 : 32);
                for (int64_t t = t0; t < t1; ++t) {
                    ggml_tritpack_gemm(src0->type, (int) ne00, (const char *) src0->data + e*nb02 + t*8*nb01,
                                       wq + (off[e] + c0)*by, by, nc, tmp, 8, simd);
                    for (int c = 0; c < nc; ++c) {
                        const int32_t * p = map + 2*(off[e] + c0 + c);
                        memcpy((char *) dst->data + p[0]*nb1 + p[1]*nb2 + t*8*sizeof(float), tmp + 8*c, 8*sizeof(float));
                    }
                }
            }
        }
    }

    static void forward_mul_mat(struct ggml_compute_params * params, struct ggml_tensor * op) {
        const ggml_tensor * src0 = op->src[0];
        const ggml_tensor * src1 = op->src[1];
        ggml_tensor * dst = op;

        GGML_TENSOR_BINARY_OP_LOCALS

        GGML_ASSERT(src1->type == GGML_TYPE_F32);
        GGML_ASSERT(ne00 == ne10 && ne0 == ne01);
        GGML_ASSERT(ne02 == 1 && ne03 == 1);
        GGML_ASSERT(nb0 == sizeof(float));

        const int ith = params->ith;
        const int nth = params->nth;
        const bool simd = !params->use_ref && ggml_tritpack_gemm_simd();

        // the activations: column j = (i11, i12, i13) at wdata + j*by
        const size_t by = ggml_tritpack_act_row_size(src0->type, ne10);
        const int64_t ncols = ne11*ne12*ne13;
        GGML_ASSERT(params->wsize >= by*ncols);
        char * wdata = (char *) params->wdata;
        for (int64_t j = ith; j < ncols; j += nth) {
            const int64_t i11 = j % ne11;
            const int64_t i12 = (j / ne11) % ne12;
            const int64_t i13 = j / (ne11*ne12);
            ggml_tritpack_quantize_act(src0->type, (const float *) ((const char *) src1->data + i11*nb11 + i12*nb12 + i13*nb13),
                                       wdata + j*by, ne10, simd);
        }
        ggml_barrier(params->threadpool);

        // this thread's row tiles, times the columns; dst is contiguous (supports_op), so column j is
        // ne0 floats after column j - 1
        const int64_t ntiles = ne01 / 8;
        const int64_t t0 = ntiles*ith / nth;
        const int64_t t1 = ntiles*(ith + 1) / nth;
        const int64_t ncol_pass = 32;
        for (int64_t c0 = 0; c0 < ncols; c0 += ncol_pass) {
            const int nc = (int) (ncols - c0 < ncol_pass ? ncols - c0 : ncol_pass);
            for (int64_t t = t0; t < t1; ++t) {
                ggml_tritpack_gemm(src0->type, (int) ne00, (const char *) src0->data + t*8*nb01, wdata + c0*by, by, nc,
                                   (float *) dst->data + c0*ne0 + t*8, (size_t) ne0, simd);
            }
        }
    }
};

static tensor_traits * get_tensor_traits() {
    static tensor_traits traits;
    return &traits;
}

// 2-D weights, or 3-D expert stacks (tiles never cross an expert: its rows are a multiple of 8)
static bool repackable(const struct ggml_tensor * t) {
    return ggml_tritpack_is_ours(t->type) && t->ne[3] == 1 && ggml_is_contiguous(t) &&
           ggml_tritpack_can_repack(t->type, t->ne[0], t->ne[1]);
}

}  // namespace ggml::cpu::tritpack

// With mmap, the loader hands set_tensor the tensor's bytes in the mapped file; once repacked they are
// not read again, but their pages stay resident and count against the process (a second copy of every
// repacked weight). On Linux, pages of a read-only file mapping are dropped again (MADV_DONTNEED: they
// stay in the page cache and would simply be read back from the file if touched). Anything else
// (an anonymous buffer, a writable mapping) is left alone.
static void ggml_tritpack_release_source(const void * data, size_t size) {
#if defined(__linux__)
    const uintptr_t page = (uintptr_t) sysconf(_SC_PAGESIZE);
    const uintptr_t lo = ((uintptr_t) data + page - 1) & ~(page - 1);
    const uintptr_t hi = ((uintptr_t) data + size) & ~(page - 1);
    if (hi <= lo) {
        return;
    }
    FILE * f = fopen("/proc/self/maps", "r");
    if (f == nullptr) {
        return;
    }
    char line[512];
    bool file_ro = false;
    while (fgets(line, sizeof(line), f)) {
        unsigned long a, b, ino = 0;
        char perms[8] = { 0 };
        unsigned long long off;
        unsigned dmaj, dmin;
        if (sscanf(line, "%lx-%lx %7s %llx %x:%x %lu", &a, &b, perms, &off, &dmaj, &dmin, &ino) != 7) {
            continue;
        }
        if (a <= lo && hi <= b) {
            file_ro = ino != 0 && perms[1] != 'w';
            break;
        }
    }
    fclose(f);
    if (file_ro) {
        madvise((void *) lo, hi - lo, MADV_DONTNEED);
    }
#else
    GGML_UNUSED(data);
    GGML_UNUSED(size);
#endif
}

static enum ggml_status ggml_backend_cpu_tritpack_buffer_init_tensor(ggml_backend_buffer_t buffer, struct ggml_tensor * tensor) {
    tensor->extra = ggml::cpu::tritpack::repackable(tensor) ? (void *) ggml::cpu::tritpack::get_tensor_traits() : nullptr;
    GGML_UNUSED(buffer);
    return GGML_STATUS_SUCCESS;
}

static void ggml_backend_cpu_tritpack_buffer_set_tensor(ggml_backend_buffer_t buffer, struct ggml_tensor * tensor,
                                                        const void * data, size_t offset, size_t size) {
    if (tensor->extra == nullptr) {
        memcpy((char *) tensor->data + offset, data, size);
        return;
    }
    GGML_ASSERT(offset == 0);
    GGML_ASSERT(size == ggml_nbytes(tensor));
    ggml_tritpack_repack(tensor->type, tensor->data, data, tensor->ne[1]*tensor->ne[2], tensor->ne[0]);
    ggml_tritpack_release_source(data, size);
    GGML_UNUSED(buffer);
}

static const char * ggml_backend_cpu_tritpack_buffer_type_get_name(ggml_backend_buffer_type_t buft) {
    GGML_UNUSED(buft);
    return "CPU_TRITPACK";
}

static ggml_backend_buffer_t ggml_backend_cpu_tritpack_buffer_type_alloc_buffer(ggml_backend_buffer_type_t buft, size_t size) {
    ggml_backend_buffer_t buffer = ggml_backend_buft_alloc_buffer(ggml_backend_cpu_buffer_type(), size);
    if (buffer == nullptr) {
        return nullptr;
    }
    // a CPU buffer whose tensors are written through the repack; reading them back is not supported
    buffer->buft              = buft;
    buffer->iface.init_tensor = ggml_backend_cpu_tritpack_buffer_init_tensor;
    buffer->iface.set_tensor  = ggml_backend_cpu_tritpack_buffer_set_tensor;
    buffer->iface.get_tensor  = nullptr;
    buffer->iface.cpy_tensor  = nullptr;
    return buffer;
}

static size_t ggml_backend_cpu_tritpack_buffer_type_get_alignment(ggml_backend_buffer_type_t buft) {
    GGML_UNUSED(buft);
    return TENSOR_ALIGNMENT;
}

namespace ggml::cpu::tritpack {

class extra_buffer_type : ggml::cpu::extra_buffer_type {
    bool supports_op(ggml_backend_dev_t, const struct ggml_tensor * op) override {
        const ggml_tensor * src0 = op->src[0];
        const ggml_tensor * src1 = op->src[1];
        if (op->op == GGML_OP_MUL_MAT) {
            if (ggml_n_dims(src0) != 2) {
                return false;
            }
        } else if (op->op == GGML_OP_MUL_MAT_ID) {
            if (ggml_n_dims(src0) != 3 || op->src[2]->type != GGML_TYPE_I32 || src1->ne[3] != 1) {
                return false;
            }
        } else {
            return false;
        }
        if (src0->buffer == nullptr || src0->buffer->buft != ggml_backend_cpu_tritpack_buffer_type() || !repackable(src0)) {
            return false;
        }
        if (src1->buffer && !ggml_backend_buft_is_host(src1->buffer->buft)) {
            return false;
        }
        return src1->type == GGML_TYPE_F32 && ggml_is_contiguous(op);
    }

    ggml::cpu::tensor_traits * get_tensor_traits(const struct ggml_tensor * op) override {
        if ((op->op == GGML_OP_MUL_MAT || op->op == GGML_OP_MUL_MAT_ID) && op->src[0]->buffer &&
            op->src[0]->buffer->buft == ggml_backend_cpu_tritpack_buffer_type()) {
            return (ggml::cpu::tensor_traits *) op->src[0]->extra;
        }
        return nullptr;
    }
};

}  // namespace ggml::cpu::tritpack

ggml_backend_buffer_type_t ggml_backend_cpu_tritpack_buffer_type(void) {
    static const bool off = [] {
        const char * e = getenv("GGML_TRITPACK_NO_REPACK");
        return e != nullptr && *e != '\0' && strcmp(e, "0") != 0;
    }();
    if (off) {
        return nullptr;
    }
    static struct ggml_backend_buffer_type buft = {
        /* .iface   = */ {
            /* .get_name       = */ ggml_backend_cpu_tritpack_buffer_type_get_name,
            /* .alloc_buffer   = */ ggml_backend_cpu_tritpack_buffer_type_alloc_buffer,
            /* .get_alignment  = */ ggml_backend_cpu_tritpack_buffer_type_get_alignment,
            /* .get_max_size   = */ nullptr,  // SIZE_MAX
            /* .get_alloc_size = */ nullptr,  // ggml_nbytes: the tiles take the bytes of the rows
            /* .is_host        = */ nullptr,
        },
        /* .device  = */ ggml_backend_reg_dev_get(ggml_backend_cpu_reg(), 0),
        /* .context = */ new ggml::cpu::tritpack::extra_buffer_type(),
    };
    return &buft;
}
