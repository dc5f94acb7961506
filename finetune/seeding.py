"""One seed for every random number generator a run draws from."""

from __future__ import annotations

import random


def set_seed(seed: int) -> None:
    """What transformers.set_seed does on CPU and CUDA (Python's, NumPy's and torch's generators,
    every GPU's included), without importing transformers.trainer_utils, which imports peft:
    3.4 s of every evaluate and generate process, measured, for a model that is not an adapter."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
