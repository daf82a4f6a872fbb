import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
# The same numbers on every x86 CPU: MKL otherwise picks its code path (AVX2, AVX-512, ...) by
# the CPU, and what torch computes through it differs in the last bit between the paths.  An
# HMC chain amplifies that into another chain: the README's 8x8 example printed a
# plaquette of 0.6976 on an AVX-512 machine where the page, written on another, shows 0.6972.
# Set before torch loads MKL; subprocesses the tests start inherit it.
os.environ.setdefault("MKL_CBWR", "COMPATIBLE")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)
