/* The memory check shared by calibrate, finetune and train-lm: the run's plan
 * (src/train/plan.h) printed in one line, and a refusal before the big
 * allocations when it cannot fit in the backend's free memory. */
#include "../quant/q2.h"
#include "../train/plan.h"
#include "cli.h"

int cli_memory_check(const char *cmd, rq_backend *be, const rq_model *m, rq_plan_opts *o, uint64_t resident,
                     bool disabled) {
    o->device = be->caps.device_memory ? RQ_PLAN_CUDA : RQ_PLAN_CPU;
    o->student_q2 = false;
    for (int l = 0; l < m->cfg.n_layers && !o->student_q2; l++)
        for (int p = 0; p < RQ_N_PROJ && !o->student_q2; p++) {
            const rq_q2_tensor *t = rq_layer_proj(&m->layers[l], p)->q2;
            if (t) o->student_q2 = true, o->quant_group_size = t->group_size;
        }
    rq_plan plan;
    rq_err err = {0};
    if (rq_plan_compute(&m->cfg, o, &plan, &err)) return cli_fail(cmd, &err);
    const double mib = 1048576.0;
    printf("memory plan (%s): weights %.1f MiB, adapters %.2f MiB, gradients %.2f MiB, moments %.2f MiB, "
           "activations (%d x %d) %.1f MiB, scratch %.1f MiB, host %.1f MiB",
           be->name, (plan.weights_q2 + plan.weights_dense) / mib, plan.adapters / mib, plan.grads / mib,
           plan.moments / mib, o->micro_batch, o->seq_len, plan.activations / mib, plan.scratch / mib, plan.host / mib);
    if (plan.teacher_weights)
        printf(", teacher beside the student %.1f MiB", (plan.teacher_weights + plan.teacher_activations) / mib);
    if (plan.teacher_pass) printf(", teacher pass %.1f MiB", plan.teacher_pass / mib);
    printf("; peak %.1f MiB\n", plan.total / mib);
    if (disabled) {
        printf("memory check skipped (--no-memory-check)\n");
        return 0;
    }
    if (rq_plan_check(&plan, o, be, resident, &err)) return cli_fail(cmd, &err);
    return 0;
}
