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


@pytest.fixture
def greedy_chat_reply():
    """An independent reference responder: ``reply(model, tokenizer, messages, max_new_tokens)`` runs a
    plain argmax loop of full forwards over one prompt (no batching, padding or cache) from the
    tokenizer's chat template, cut at the first end-of-sequence token, and decodes what it produced."""
    import torch

    def reply(model, tokenizer, messages, max_new_tokens: int) -> str:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        new: list[int] = []
        with torch.no_grad():
            for _ in range(max_new_tokens):
                token = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
                if token == tokenizer.eos_token_id:
                    break
                new.append(token)
        return tokenizer.decode(new, skip_special_tokens=True).strip()

    return reply
