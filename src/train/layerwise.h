/* Layer-wise quantization on calibration windows: GPTQ (the solver:
 * src/quant/gptq.h) and block-wise reconstruction, run one decoder layer at a
 * time (only one layer's inputs are resident, never the whole model's
 * activations).
 *
 * For each layer, in order:
 *  1. Initial codes, scales and offsets of the chosen projections: RTN / NF2
 *     (rq_quantize), or GPTQ, where the projections sharing an input are
 *     quantized together and in order (q, k, v; o; gate, up; down), each from
 *     the inputs it sees with everything before it already quantized
 *     (H = 2 X^T X / N in fp64).
 *  2. Optionally block-wise reconstruction (OmniQuant's scheme, EfficientQAT's
 *     Block-AP parameterization): the layer's quantization parameters train so
 *     that its output on the quantized stream X_q matches the full-precision
 *     layer's output on the full-precision stream X_fp (MSE), with
 *     straight-through rounding so codes may change. Per (row, group) the scale
 *     s and offset m train: the clipping range [m, m + 3 s] is learned (learnable
 *     weight clipping, parameterized by s and m rather than LWC's sigmoid factors
 *     of min and max); with refine_weights the weights train too (Block-AP).
 *     w^ = s clamp(round((w - m) / s), 0, 3) + m, and with u = (w - m) / s:
 *     dw^/ds = round(u) - u and dw^/dm = 0 inside the range, q and 1 where the
 *     code is clamped; dw^/dw = 1 inside, 0 outside. They train in units of the
 *     group's initial step s0 (s = s0 exp(a), m = m0 + s0 b, w = w0 + s0 c), so
 *     one learning rate fits every model; Adam; then s and m are rounded to fp16
 *     and the codes chosen against them (int2 only). The start is the initial
 *     quantized model exactly: w0 is the weight itself after RTN and GPTQ's
 *     error-compensated weight (before its rounding) after GPTQ.
 *  3. The quantized layer's outputs on X_q are the next layer's inputs (and the
 *     full-precision layer's outputs on X_fp the next targets). */
#ifndef RQ_LAYERWISE_H
#define RQ_LAYERWISE_H

#include "../backend/backend.h"
#include "../model/model.h"
#include "../quant/gptq.h"
#include "../quant/quantize_model.h"

typedef struct rq_layerwise_opts {
    rq_gptq_opts gptq;       /* method (codebook), group size, clip search; GPTQ's damp and block */
    bool gptq_init;          /* GPTQ chooses the initial parameters (else RTN / NF2) */
    int refine_epochs;       /* block-wise reconstruction passes over the windows (0: none) */
    bool refine_weights;     /* Block-AP: the weights train too (else only the scales and offsets) */
    double refine_lr;        /* Adam learning rate of log s and of m / s0 */
    double refine_weight_lr; /* of w / s0 */
    unsigned proj_mask;      /* projections to quantize (0: all seven) */
    int batch;               /* windows per forward call and per training step (1) */
} rq_layerwise_opts;

void rq_layerwise_opts_default(rq_layerwise_opts *o);

/* Quantize m's projections in place on the calibration windows tokens
 * [n_windows][T]. The report's relative errors compare with the original
 * weights; rep may be NULL. On failure m may be left partly quantized (free it). */
rq_status rq_layerwise_quantize(rq_model *m, rq_backend *be, const int *tokens, int n_windows, int T,
                                const rq_layerwise_opts *o, rq_model_quant_report *rep, rq_err *err);

/* The same from a checkpoint read a layer at a time (cfg and tab as
 * rq_model_table_config and a checkpoint's tensor table give them): only one
 * layer's fp32 weights are resident (the embedding table while the windows are
 * embedded), never the fp32 model. *out is the quantized model: q2 projections,
 * the rest in fp32 (no tokenizer, path or format: the caller sets them). The
 * same windows and options give the same q2 tensors as rq_layerwise_quantize
 * on the loaded model. */
rq_status rq_layerwise_quantize_checkpoint(const rq_config *cfg, const struct rq_tensor_table *tab, rq_backend *be,
                                           const int *tokens, int n_windows, int T, const rq_layerwise_opts *o,
                                           rq_model **out, rq_model_quant_report *rep, rq_err *err);

#endif
