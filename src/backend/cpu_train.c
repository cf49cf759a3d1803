/* The CPU backend's training ops (backward passes, losses, optimizer). */
#include "backend.h"

void rq_cpu_train_ops_install(rq_backend *be);

void rq_cpu_train_ops_install(rq_backend *be) { (void)be; }
