"""GPT-1 through the library converter, both ways, against transformers' OpenAI GPT."""

from __future__ import annotations

import pytest
import torch
import transformers

from hf_paper_models import convert_from_transformers, convert_to_transformers
from hf_paper_models.models.gpt1 import (
    PaperGPT1DoubleHeadsModel,
    PaperGPT1ForSequenceClassification,
    PaperGPT1LMHeadModel,
    PaperGPT1Model,
)

CONFIG = dict(n_embd=32, n_layer=2, n_head=4, vocab_size=97, n_positions=40, num_labels=3, pad_token_id=0)


@pytest.mark.parametrize(
    "their_class, our_class",
    [
        (transformers.OpenAIGPTModel, PaperGPT1Model),
        (transformers.OpenAIGPTLMHeadModel, PaperGPT1LMHeadModel),
        (transformers.OpenAIGPTDoubleHeadsModel, PaperGPT1DoubleHeadsModel),
        (transformers.OpenAIGPTForSequenceClassification, PaperGPT1ForSequenceClassification),
    ],
)
def test_openai_gpt_converts_both_ways(their_class, our_class):
    torch.manual_seed(0)
    theirs = their_class(transformers.OpenAIGPTConfig(**CONFIG)).eval()
    ours = convert_from_transformers(theirs)
    assert type(ours) is our_class
    input_ids = torch.randint(1, 97, (2, 15), generator=torch.Generator().manual_seed(1))
    kwargs = {}
    if their_class is transformers.OpenAIGPTDoubleHeadsModel:
        input_ids = torch.stack([input_ids, input_ids.flip(-1)], dim=1)  # (batch, choices, seq)
        kwargs["mc_token_ids"] = torch.tensor([[14, 10], [14, 14]])
    keys = {"last_hidden_state"} if their_class is transformers.OpenAIGPTModel else {"logits"}
    if their_class is transformers.OpenAIGPTDoubleHeadsModel:
        keys.add("mc_logits")
    with torch.no_grad():
        a = theirs(input_ids, **kwargs)
        b = ours(input_ids, **kwargs)
        back = convert_to_transformers(ours)
        c = back(input_ids, **kwargs)
    assert type(back) is their_class
    for key in keys:
        torch.testing.assert_close(b[key], a[key], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(c[key], a[key], atol=1e-4, rtol=1e-4)
