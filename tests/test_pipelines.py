"""transformers pipelines run on our models with the locally trained tokenizers."""

from __future__ import annotations

import pytest
import torch
from transformers import pipeline

from hf_paper_models import preset
from hf_paper_models.models.gpt2 import PaperGPT2LMHeadModel
from hf_paper_models.models.gpt3 import PaperGPT3LMHeadModel
from hf_paper_models.tokenizers import get_tokenizer


@pytest.mark.parametrize("name, model_class", [("gpt2-small", PaperGPT2LMHeadModel), ("gpt3-small", PaperGPT3LMHeadModel)])
def test_text_generation_pipeline_matches_generate(tmp_path, name, model_class):
    tokenizer = get_tokenizer("byte_bpe", vocab_size=1000)
    overrides = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=128, bos_token_id=tokenizer.bos_token_id,
                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if name.startswith("gpt3"):
        overrides["sliding_window"] = 8
    torch.manual_seed(0)
    model = model_class(preset(name, **overrides)).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    generator = pipeline("text-generation", model=str(tmp_path), tokenizer=str(tmp_path))
    assert type(generator.model) is model_class
    prompt = "The old river runs"
    text = generator(prompt, max_new_tokens=12, do_sample=False, min_new_tokens=12)[0]["generated_text"]
    ids = tokenizer(prompt, return_tensors="pt")
    expected = model.generate(**ids, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert text == tokenizer.decode(expected[0], skip_special_tokens=True)
    assert text.startswith(prompt) and len(text) > len(prompt)
