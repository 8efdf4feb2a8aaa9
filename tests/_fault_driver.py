"""``python tests/_fault_driver.py ARGS``: the natgrad command with slow fake experiments registered.

The fault tests run it as a separate process, so that it can be killed. Three experiments (alpha, beta,
gamma) sleep ``FAKE_STEP_SECONDS`` per step and while building figures.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import natgrad.experiments as experiments_api  # noqa: E402
from _fake_experiments import make_experiment  # noqa: E402
from natgrad.__main__ import main  # noqa: E402

NAMES = ("alpha", "beta", "gamma")


def fake_experiments(step_seconds: float) -> dict:
    calls: Counter = Counter()
    made = [
        make_experiment(name, calls, value=0.5 * i, step_seconds=step_seconds, figure_seconds=step_seconds)
        for i, name in enumerate(NAMES)
    ]
    return {e.name: e for e in made}


if __name__ == "__main__":
    registry = fake_experiments(float(os.environ.get("FAKE_STEP_SECONDS", "0.05")))
    experiments_api.all_experiments = lambda: registry
    sys.argv = ["natgrad", *sys.argv[1:]]
    main()
