import os

import torch

torch.set_num_threads(int(os.environ.get("NATGRAD_TEST_THREADS", "1")))
