/* Choosing a backend by name. */
#include "backend.h"

rq_status rq_backend_create(const char *name, int n_threads, rq_backend **out, rq_err *err) {
    if (!name || !strcmp(name, "cpu")) return rq_backend_cpu_create(n_threads, out, err);
    if (!strcmp(name, "cuda"))
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED,
                       "--device cuda: the CUDA backend is not available in this build (only 'cpu' is)");
    return RQ_FAIL(err, RQ_ERR_ARG, "unknown device '%s' (expected cpu or cuda)", name);
}

void rq_backend_destroy(rq_backend *be) {
    if (be) be->destroy(be);
}
