# Generates adam_torch_expect.txt: torch.optim.Adam / AdamW trajectories that
# tests/test_train_ops.c replays. Run with Debian's python3-torch:
#   /usr/bin/python3 tests/data/gen_adam_torch_expect.py > tests/data/adam_torch_expect.txt
import math
import torch

N, STEPS = 8, 3
CASES = [  # (name, optimizer, lr, weight_decay)
    ("adam", torch.optim.Adam, 1e-2, 0.0),
    ("adam", torch.optim.Adam, 1e-2, 0.1),
    ("adamw", torch.optim.AdamW, 1e-2, 0.01),
    ("adamw", torch.optim.AdamW, 3e-1, 0.5),
]


def fmt(t):
    return " ".join("%.9g" % float(x) for x in t.tolist())


print("# torch %s; per case: header, p0, then (g_s, p_s) for s = 1..%d" % (torch.__version__, STEPS))
print("cases %d n %d steps %d" % (len(CASES), N, STEPS))
for name, opt_cls, lr, wd in CASES:
    p = torch.tensor([0.5 * math.sin(i + 1.0) for i in range(N)], dtype=torch.float32, requires_grad=True)
    opt = opt_cls([p], lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    print("case %s lr %.9g wd %.9g" % (name, lr, wd))
    print("p0 " + fmt(p.detach()))
    for s in range(1, STEPS + 1):
        g = torch.tensor([math.cos(0.7 * i + s) * (0.1 if i % 3 else 2.0) for i in range(N)], dtype=torch.float32)
        p.grad = g.clone()
        opt.step()
        print("g%d " % s + fmt(g))
        print("p%d " % s + fmt(p.detach()))
