"""Suite-wide settings.

The suite's models are tiny and `make test` runs two xdist workers on two cores: one intra-op thread
per worker is several times faster than each worker fighting over both cores. Subprocesses that the
tests start inherit ``OMP_NUM_THREADS=1`` for the same reason.

accelerate keeps one process-wide ``AcceleratorState``: a test whose Trainer ran in bf16 would make
every later ``Accelerator(mixed_precision="no")`` in the same worker fail, so it is reset after each test
(as accelerate's own test cases do).
"""

from __future__ import annotations

import os

import pytest


def pytest_configure(config):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True)
def _fresh_accelerator_state():
    yield
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()
