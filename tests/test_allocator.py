"""natgrad.keep_freed_memory: large tensors of the same sizes, freed and allocated again step after step, reuse
their pages instead of faulting in new ones."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# In a fresh interpreter: six "steps" that each allocate two 64 MiB tensors and free them; the page faults of each
_PROBE = """
import json, resource, sys
import torch
import natgrad as ng
kept = ng.keep_freed_memory() if sys.argv[1] == "keep" else None
faults, sums = [], []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(2**23, dtype=torch.float64)
    y = x * 2.0
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    sums.append(float(y.sum()))
    del x, y
print(json.dumps({"kept": kept, "faults": faults, "sums": sums}))
"""
PAGES = 2 * 2**26 // 4096  # the two tensors' 4 KiB pages


def _probe(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_tensors_of_the_same_sizes_every_step_stop_faulting_in_new_pages() -> None:
    kept, plain = _probe("keep"), _probe("plain")
    assert kept["kept"] is True
    assert all(f >= PAGES // 2 for f in plain["faults"])  # fresh mappings every step
    # a few steps to settle the heap's free blocks, then they are reused as they are
    assert all(f <= PAGES // 20 for f in kept["faults"][3:])
    assert kept["sums"] == plain["sums"] == [2.0 * 2**23] * 6


def test_elsewhere_it_reports_that_nothing_changed(monkeypatch) -> None:
    import natgrad as ng

    monkeypatch.setattr(sys, "platform", "darwin")
    assert ng.keep_freed_memory() is False
