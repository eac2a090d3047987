import os

import torch

# Two cores shared with training and other jobs: one thread per test process.
torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
