import os

import torch

torch.set_num_threads(int(os.environ.get("NATGRAD_TEST_THREADS", "1")))

from hypothesis import settings  # noqa: E402

# CI runs the same examples every time; locally hypothesis explores new ones.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")
