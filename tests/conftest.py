"""Suite-wide settings.

The suite's models are tiny and `make test` runs two xdist workers on two cores: one intra-op thread
per worker is several times faster than each worker fighting over both cores. Subprocesses that the
tests start inherit ``OMP_NUM_THREADS=1`` for the same reason.
"""

from __future__ import annotations

import os


def pytest_configure(config):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
