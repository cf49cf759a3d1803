/* Choosing a backend by name. */
#include "backend.h"

rq_status rq_backend_create(const char *name, int n_threads, rq_backend **out, rq_err *err) {
    if (!name || !strcmp(name, "cpu")) return rq_backend_cpu_create(n_threads, out, err);
    if (!strcmp(name, "cuda")) {
#ifdef RILQ_HAVE_CUDA
        return rq_backend_cuda_create(n_threads, out, err);
#else
        return RQ_FAIL(err, RQ_ERR_UNSUPPORTED,
                       "--device cuda: this build has no CUDA backend (nvcc was not found when it was configured; "
                       "rebuild with -DRILQ_CUDA=ON)");
#endif
    }
    return RQ_FAIL(err, RQ_ERR_ARG, "unknown device '%s' (expected cpu or cuda)", name);
}

void rq_backend_destroy(rq_backend *be) {
    if (be) be->destroy(be);
}
