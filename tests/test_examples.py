"""The examples run as scripts and print what they claim."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(script: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_quickstart_agrees_with_reference():
    out = _run("quickstart.py")
    agreement = float(re.search(r"agreement with reference: (\S+)", out).group(1))
    assert agreement < 1e-10
    # 10 inputs × 3 classes; the softmax Fisher drops one direction per input and d = 131 > 30,
    # so rank G = 10 · (3 − 1), and the auto rule picks the structured route (a module, r = 30 < d).
    assert re.search(r"rank of G: (\d+)", out).group(1) == "20"
    assert re.search(r"method: (\w+)", out).group(1) == "structured"
