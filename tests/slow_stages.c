/* The two stages end to end through the `rilq` command on stories260K:
 * a tiny calibrate (validation loss logged, adapters and calibrate.json
 * written, teacher cache reused on the second run) and a finetune on a few
 * ARC-Easy examples killed after epoch 1 and resumed to epoch 2, which must
 * give adapters bit-identical to an uninterrupted 2-epoch run. */
#include "test.h"

static int run(const char *cmd) {
    fprintf(stderr, "+ %s\n", cmd);
    return system(cmd);
}

static bool same_file(const char *a, const char *b) {
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    rq_err err = {0};
    bool same = rq_file_read_all(a, &x, &nx, &err) == RQ_OK && rq_file_read_all(b, &y, &ny, &err) == RQ_OK && nx == ny &&
                memcmp(x, y, nx) == 0;
    free(x);
    free(y);
    return same;
}

static bool file_has(const char *path, const char *needle) {
    char *x = NULL;
    size_t n = 0;
    rq_err err = {0};
    bool has = rq_file_read_all(path, &x, &n, &err) == RQ_OK && strstr(x, needle) != NULL;
    free(x);
    return has;
}

int main(void) {
    const char *model = rq_test_data("models/stories260K/stories260K.bin");
    const char *bin = getenv("RQ_BINARY_DIR");
    const char *root = rq_test_out("stages");
    char cmd[16384], a[4096], b[4096];
    snprintf(cmd, sizeof cmd, "rm -rf %s && mkdir -p %s && %s/rilq quantize %s --method rtn --group-size 32 --out %s/q2 > /dev/null",
             root, root, bin ? bin : "build", model, root);
    CHECK(run(cmd) == 0);
    const char *common = "--windows 12 --seq-len 64 --val-windows 4 --rank 8 --group-size 32 --max-micro-steps 16 "
                         "--accum 2 --eval-every 2 --lr 1e-3 --threads 1";
    for (int pass = 0; pass < 2; pass++) {
        snprintf(cmd, sizeof cmd, "%s/rilq calibrate %s --student %s/q2 --out %s/cal%d %s --cache %s/cache > %s/cal%d.log 2>&1",
                 bin ? bin : "build", model, root, root, pass, common, root, root, pass);
        CHECK(run(cmd) == 0);
    }
    snprintf(a, sizeof a, "%s/cal0/metrics.jsonl", root);
    CHECK(file_has(a, "\"val_loss\""));
    snprintf(a, sizeof a, "%s/cal0/adapter/adapter_model.safetensors", root);
    CHECK(rq_file_exists(a));
    snprintf(a, sizeof a, "%s/cal0/calibrate.json", root);
    CHECK(file_has(a, "\"head_error_after\""));
    snprintf(a, sizeof a, "%s/cal1/calibrate.json", root);
    CHECK(file_has(a, "\"teacher_cache_reused\":\ttrue"));
    /* same cache, same seed: the two runs agree bit for bit */
    snprintf(a, sizeof a, "%s/cal0/adapter/adapter_model.safetensors", root);
    snprintf(b, sizeof b, "%s/cal1/adapter/adapter_model.safetensors", root);
    CHECK(same_file(a, b));

    const char *ft = "--task arc_easy --limit 12 --batch 4 --micro-batch 2 --rank 4 --group-size 32 --lr 1e-3 --threads 1";
    snprintf(cmd, sizeof cmd, "%s/rilq finetune %s/q2 %s --epochs 2 --out %s/ft_full > /dev/null 2>&1", bin ? bin : "build",
             root, ft, root);
    CHECK(run(cmd) == 0);
    snprintf(cmd, sizeof cmd, "%s/rilq finetune %s/q2 %s --epochs 1 --out %s/ft_kill > /dev/null 2>&1", bin ? bin : "build",
             root, ft, root);
    CHECK(run(cmd) == 0);
    snprintf(cmd, sizeof cmd, "%s/rilq finetune %s/q2 %s --epochs 2 --resume --out %s/ft_kill > /dev/null 2>&1",
             bin ? bin : "build", root, ft, root);
    CHECK(run(cmd) == 0);
    snprintf(a, sizeof a, "%s/ft_full/adapter/adapter_model.safetensors", root);
    snprintf(b, sizeof b, "%s/ft_kill/adapter/adapter_model.safetensors", root);
    CHECK(same_file(a, b));
    snprintf(a, sizeof a, "%s/ft_full/adapter-epoch-1/adapter_model.safetensors", root);
    snprintf(b, sizeof b, "%s/ft_kill/adapter-epoch-1/adapter_model.safetensors", root);
    CHECK(same_file(a, b));
    /* starting from stage-1 adapters */
    snprintf(cmd, sizeof cmd, "%s/rilq finetune %s/q2 --task arc_easy --limit 4 --batch 4 --epochs 1 --adapter %s/cal0/adapter "
             "--out %s/ft_rilq --threads 1 > /dev/null 2>&1", bin ? bin : "build", root, root, root);
    CHECK(run(cmd) == 0);
    return rq_test_finish();
}
