"""The structured routes' memory estimate counts their per-layer factors and the budget holds.

(1) The estimate bounds the bytes the emitted factors really hold. (2) On a conv net whose factors exceed a
small budget, ``method="structured"`` refuses before allocating them (resident-set growth, measured in a
fresh process) and ``auto`` picks a route that fits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from natgrad.models.structured import emit_factors, factor_bytes

F64 = torch.float64


def _mlp() -> tuple[nn.Module, torch.Tensor]:
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)), torch.randn(12, 5)


def _cnn() -> tuple[nn.Module, torch.Tensor]:
    net = nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 4, 3, stride=2, groups=2),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 3),
    )
    return net, torch.randn(5, 2, 8, 8)


@pytest.mark.parametrize("build", [_mlp, _cnn])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("width", [None, 2])
def test_estimate_bounds_the_bytes_the_factors_hold(build, dtype, width):
    torch.manual_seed(0)
    net, x = build()
    net, x = net.to(dtype), x.to(dtype)
    n_ex, per = x.shape[0], 3
    blocks = None if width is None else torch.randn(n_ex, per, width, dtype=dtype)
    factors, context = emit_factors(net, x, blocks, check_outside=False)
    held = factors.nbytes()
    rows = n_ex * (per if width is None else width)
    estimate = factor_bytes(net, (x,), {}, rows, dtype.itemsize)
    context.release()
    assert held > 0 and held <= estimate <= 5 * held


_CHILD = """
import json, sys, torch
from torch import nn
import natgrad as ng
torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                    nn.Flatten(), nn.Linear(32 * 16 * 16, 10)).double()
x = torch.randn(24, 3, 16, 16, dtype=torch.float64)
phi, params = ng.from_module(net, x)
loss = lambda z: z.square().sum()
small, chunked = int(sys.argv[1]), int(sys.argv[2])
flat = lambda res: ng.flatten_params(res.direction)

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

def growth(call):
    # the peak resident set of this call over the resident set before it (the kernel resets the peak)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS")
    result = call()
    return result, status("VmHWM") - before

out = {}
# First (and a warm-up of φ and its J products): auto under the small budget skips the structured route.
small_auto = ng.natural_gradient(phi, params, loss, memory_budget=small, max_iter=2, throw=False)
out["small_auto"] = small_auto.method
def refused():
    try:
        ng.natural_gradient(phi, params, loss, method="structured", memory_budget=small)
        return ""
    except ng.MemoryBudgetError as error:
        return str(error)
out["refused"], out["refused_growth"] = growth(refused)
res, out["chunked_growth"] = growth(
    lambda: ng.natural_gradient(phi, params, loss, method="structured", memory_budget=chunked)
)
out["chunked"] = res.info.get("chunked")
auto = ng.natural_gradient(phi, params, loss, memory_budget=chunked)
out["auto"], out["auto_chunked"] = auto.method, auto.info.get("chunked")
ref, out["unchunked_growth"] = growth(lambda: ng.natural_gradient(phi, params, loss, method="structured"))
assert "chunked" not in ref.info  # all factors at once
out["error"] = float((flat(res) - flat(ref)).norm() / flat(ref).norm())
out["auto_error"] = float((flat(auto) - flat(ref)).norm() / flat(ref).norm())
print(json.dumps(out))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_structured_chunks_within_the_budget_and_refuses_below_one_example():
    """Factors of r = 240 signals × 16 384 conv outputs (≈ 150 MiB estimated, float64): under 64 MiB the kernel
    is assembled over chunks of examples with the call's peak resident set growing by less than the budget
    (while the unchunked call's grows by more); under 16 MiB (K, its workspace and two one-example chunks do
    not fit) the route refuses before allocating anything. Peaks are per call (``/proc/self/clear_refs``): the
    process's ``ru_maxrss`` would start at the forking parent's resident set."""
    net = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 16 * 16, 10),
    ).double()
    x = torch.randn(24, 3, 16, 16, dtype=F64)
    factor_size = factor_bytes(net, (x,), {}, 24 * 10, 8)
    small, chunked = 16 * 2**20, 64 * 2**20
    assert factor_size > 2 * chunked
    # glibc: large blocks always mmapped and returned when freed, so that memory freed by an earlier call
    # cannot hide a later call's peak from the resident-set measure (nor make it depend on heap history).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "0"}
    run = subprocess.run(
        [sys.executable, "-c", _CHILD, str(small), str(chunked)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert "method='structured' needs about" in out["refused"] and "per-layer factors" in out["refused"]
    assert "assembling K chunk by chunk does not fit either" in out["refused"]
    assert out["refused_growth"] < factor_size / 4  # nothing factor-sized was allocated
    assert out["small_auto"] != "structured"
    assert out["chunked"]["chunks"] >= 3
    assert out["chunked_growth"] < chunked < out["unchunked_growth"]
    assert out["auto"] == "structured" and out["auto_chunked"] == out["chunked"]
    assert out["error"] <= 1e-10 and out["auto_error"] <= 1e-10
