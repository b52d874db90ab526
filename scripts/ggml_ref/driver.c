/*
 * Dev-only driver around ggml's own quantizers (ggml-quants.c, compiled from a fetched llama.cpp / ggml source tree
 * by build.sh; never at npm test time). Reads the test rows moe's codec test uses and writes, per type, the bytes
 * ggml's encoder produced and ggml's decode of them:
 *   driver ROWS COLS INPUTS.f32 IMPORTANCE.f32 OUTDIR
 * writes OUTDIR/<T>.bin and OUTDIR/<T>.dec.f32 for
 *   F16, BF16                       ggml_compute_fp32_to_fp16 / _bf16 (ggml-impl.h)
 *   Q8_0, Q4_0                      quantize_row_<t>_ref, dequantize_row_<t>
 *   Q2_K, Q3_K, Q4_K, Q5_K, Q6_K    quantize_row_<t>_ref (plain) and quantize_<t>(…, importance) (-imatrix),
 *                                   dequantize_row_<t>
 */
#define GGML_COMMON_DECL_C
#include "ggml-common.h"
#include "ggml-impl.h"
#include "ggml-quants.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ggml.c is not linked: the few symbols ggml-quants.c needs from it. */
void ggml_abort(const char * file, int line, const char * fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "ggml_abort %s:%d: ", file, line);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}
static size_t block_bytes(enum ggml_type t) {
    switch (t) {
        case GGML_TYPE_Q4_0: return sizeof(block_q4_0);
        case GGML_TYPE_Q8_0: return sizeof(block_q8_0);
        case GGML_TYPE_Q2_K: return sizeof(block_q2_K);
        case GGML_TYPE_Q3_K: return sizeof(block_q3_K);
        case GGML_TYPE_Q4_K: return sizeof(block_q4_K);
        case GGML_TYPE_Q5_K: return sizeof(block_q5_K);
        case GGML_TYPE_Q6_K: return sizeof(block_q6_K);
        default: ggml_abort(__FILE__, __LINE__, "type %d not used by the driver", (int) t);
    }
}
static int64_t block_values(enum ggml_type t) {
    return t == GGML_TYPE_Q4_0 || t == GGML_TYPE_Q8_0 ? 32 : QK_K;
}
size_t ggml_type_size(enum ggml_type t) { return block_bytes(t); }
size_t ggml_row_size(enum ggml_type t, int64_t ne) { return block_bytes(t) * (size_t) (ne / block_values(t)); }
const char * ggml_type_name(enum ggml_type t) { (void) t; return "?"; }

static void * read_all(const char * path, size_t want) {
    FILE * f = fopen(path, "rb");
    if (!f) { perror(path); exit(1); }
    void * p = malloc(want);
    if (fread(p, 1, want, f) != want) { fprintf(stderr, "%s: short read\n", path); exit(1); }
    fclose(f);
    return p;
}
static void write_all(const char * dir, const char * name, const char * ext, const void * p, size_t n) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s%s", dir, name, ext);
    FILE * f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n || fclose(f)) { perror(path); exit(1); }
}

typedef void (*ref_fn)(const float *, void *, int64_t);
typedef size_t (*quant_fn)(const float *, void *, int64_t, int64_t, const float *);
typedef void (*dec_fn)(const void *, float *, int64_t);

struct kind {
    const char * name;
    enum ggml_type type;
    ref_fn ref;
    quant_fn imat; /* NULL: ggml has no importance path for it here */
    dec_fn dec;
};

int main(int argc, char ** argv) {
    if (argc != 6) { fprintf(stderr, "usage: driver ROWS COLS INPUTS.f32 IMPORTANCE.f32 OUTDIR\n"); return 2; }
    const int64_t rows = atoll(argv[1]);
    const int64_t cols = atoll(argv[2]);
    const int64_t n = rows * cols;
    const float * x = read_all(argv[3], (size_t) n * sizeof(float));
    const float * imp = read_all(argv[4], (size_t) cols * sizeof(float));
    const char * out = argv[5];
    float * dec = malloc((size_t) n * sizeof(float));
    uint16_t * half = malloc((size_t) n * sizeof(uint16_t));

    for (int64_t i = 0; i < n; i++) half[i] = GGML_FP32_TO_FP16(x[i]);
    for (int64_t i = 0; i < n; i++) dec[i] = GGML_FP16_TO_FP32(half[i]);
    write_all(out, "F16", ".bin", half, (size_t) n * 2);
    write_all(out, "F16", ".dec.f32", dec, (size_t) n * 4);
    for (int64_t i = 0; i < n; i++) half[i] = GGML_FP32_TO_BF16(x[i]).bits;
    for (int64_t i = 0; i < n; i++) dec[i] = GGML_BF16_TO_FP32(((ggml_bf16_t) { half[i] }));
    write_all(out, "BF16", ".bin", half, (size_t) n * 2);
    write_all(out, "BF16", ".dec.f32", dec, (size_t) n * 4);

    const struct kind kinds[] = {
        { "Q8_0", GGML_TYPE_Q8_0, (ref_fn) quantize_row_q8_0_ref, NULL, (dec_fn) dequantize_row_q8_0 },
        { "Q4_0", GGML_TYPE_Q4_0, (ref_fn) quantize_row_q4_0_ref, NULL, (dec_fn) dequantize_row_q4_0 },
        { "Q2_K", GGML_TYPE_Q2_K, (ref_fn) quantize_row_q2_K_ref, quantize_q2_K, (dec_fn) dequantize_row_q2_K },
        { "Q3_K", GGML_TYPE_Q3_K, (ref_fn) quantize_row_q3_K_ref, quantize_q3_K, (dec_fn) dequantize_row_q3_K },
        { "Q4_K", GGML_TYPE_Q4_K, (ref_fn) quantize_row_q4_K_ref, quantize_q4_K, (dec_fn) dequantize_row_q4_K },
        { "Q5_K", GGML_TYPE_Q5_K, (ref_fn) quantize_row_q5_K_ref, quantize_q5_K, (dec_fn) dequantize_row_q5_K },
        { "Q6_K", GGML_TYPE_Q6_K, (ref_fn) quantize_row_q6_K_ref, quantize_q6_K, (dec_fn) dequantize_row_q6_K },
    };
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        const struct kind * t = &kinds[k];
        const size_t bytes = (size_t) rows * ggml_row_size(t->type, cols);
        void * q = calloc(1, bytes);
        char name[64];
        for (int i = 0; i < rows; i++) { /* row by row, as llama-quantize hands rows to the encoder */
            t->ref(x + i * cols, (char *) q + i * ggml_row_size(t->type, cols), cols);
        }
        t->dec(q, dec, n);
        write_all(out, t->name, ".bin", q, bytes);
        write_all(out, t->name, ".dec.f32", dec, (size_t) n * 4);
        if (t->imat) {
            memset(q, 0, bytes);
            if (t->imat(x, q, rows, cols, imp) != bytes) {
                fprintf(stderr, "%s: unexpected size\n", t->name);
                return 1;
            }
            t->dec(q, dec, n);
            snprintf(name, sizeof name, "%s-imatrix", t->name);
            write_all(out, name, ".bin", q, bytes);
            write_all(out, name, ".dec.f32", dec, (size_t) n * 4);
        }
        free(q);
    }
    return 0;
}
