/* The decode path on the real SmolLM2-135M (the Q4_1 GGUF, its projections
 * quantized to 2 bits here with RTN): its tied head, which the GGUF stores as
 * Q8_0, has an exact int8-block copy (every weight d * q bit for bit), and
 * greedy generation through the decode kernels (that copy, the q2 kernels)
 * gives the same tokens as the GEMM path. */
#include "backend/cpu_matvec.h"
#include "decode_common.h"
#include "model/model.h"
#include "quant/quantize_model.h"
#include "test.h"

int main(void) {
    const char *path = rq_test_smollm2();
    rq_err err = {0};
    rq_model *m = NULL;
    CHECK_OK(rq_model_load(path, NULL, &m, &err), &err);
    if (!m) return rq_test_finish();
    const rq_linear *head = &m->lm_head;
    rq_dense_matrix cm;
    CHECK_OK(rq_dense_compact(head->w, head->out, head->in, &cm, &err), &err);
    CHECKF(cm.kind == RQ_DENSE_I8, "SmolLM2's head (Q8_0 in the GGUF) compacted to %s", rq_dense_kind_name(cm.kind));
    if (cm.kind == RQ_DENSE_I8) {
        size_t diff = 0, n = (size_t)head->out * head->in;
        const int8_t *q = cm.w;
        for (size_t i = 0; i < n; i++)
            diff += rq_bits_from_f32(cm.d[i / RQ_DENSE_I8_BLOCK] * (float)q[i]) != rq_bits_from_f32(head->w[i]);
        CHECKF(diff == 0, "%zu head weights differ from their int8-block copy", diff);
    }
    rq_dense_free(&cm);

    rq_model_quant_opts qo;
    rq_model_quant_opts_default(&qo);
    CHECK_OK(rq_model_quantize(m, &qo, NULL, &err), &err);
    rq_backend *be = NULL;
    CHECK_OK(rq_backend_cpu_create(0, &be, &err), &err);
    const char *prompt = "Question: A farmer has 12 cows and buys 7 more. How many cows does he have?\nAnswer:";
    int *ids = NULL, n_ids = 0;
    CHECK_OK(rq_tokenizer_encode(m->tok, prompt, strlen(prompt), RQ_BOS_DEFAULT, &ids, &n_ids, &err), &err);
    if (be && ids) {
        int na = 0, nb = 0;
        int *a = generate_greedy(m, be, ids, n_ids, 24, true, &na);
        int *b = generate_greedy(m, be, ids, n_ids, 24, false, &nb);
        int first = -1;
        for (int i = 0; a && b && i < na && i < nb && first < 0; i++)
            if (a[i] != b[i]) first = i;
        CHECKF(a && b && na == 24 && nb == 24 && first < 0,
               "2-bit SmolLM2: decode kernels and GEMM path differ (%d and %d tokens, first difference at %d)", na, nb,
               first);
        printf("2-bit SmolLM2 (rtn): %d greedy tokens identical on the decode kernels and the GEMM path\n", na);
        free(a), free(b);
    }
    free(ids);
    rq_backend_destroy(be);
    rq_model_free(m);
    return rq_test_finish();
}
