"""``hfpm demo`` / ``make demo``: train a tiny GPT-2 on the embedded corpus, show the loss falling and
a sample, and leave a Hub-ready folder (safetensors, tokenizer, model card, source files).

It runs the causal-LM recipe (``training/pretrain_lm.py`` with ``training/configs/gpt2_tiny.yaml``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "training" / "pretrain_lm.py"
CONFIG = REPO / "training" / "configs" / "gpt2_tiny.yaml"
PROMPT = "The old woman"


def load_pretrain_recipe():
    """``training/pretrain_lm.py`` (a script, not part of the package) as a module, loaded once."""
    if "pretrain_lm" in sys.modules:
        return sys.modules["pretrain_lm"]
    if not RECIPE.is_file():
        raise ValueError(f"This runs {RECIPE}, which is missing: run it from a checkout of the repository.")
    spec = importlib.util.spec_from_file_location("pretrain_lm", RECIPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def _seconds_per_step(run_dir: Path) -> float | None:
    """Seconds per training step in the last logged window of a recipe run (None if not logged)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return None
    for events in sorted(run_dir.glob("runs/*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if "tokens_per_second" in accumulator.Tags().get("scalars", []):
            tokens_per_second = accumulator.Scalars("tokens_per_second")[-1].value
            config = _recipe_values()
            return config["per_device_train_batch_size"] * config["block_size"] / tokens_per_second
    return None


def _recipe_values() -> dict:
    import yaml

    return yaml.safe_load(CONFIG.read_text())


def run_demo(
    output_dir: str = "runs/demo", seconds: float = 120.0, seed: int = 0, steps: int | None = None
) -> Path:
    """Train for about ``seconds`` (50 to 400 steps of the tiny recipe), or exactly ``steps`` when
    given; return the saved folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_paper_models  # noqa: F401  (registers the Auto classes)
    from hf_paper_models.data import lm_dataset
    from hf_paper_models.evaluation import perplexity

    recipe = load_pretrain_recipe()
    # Calibrate: 20 steps to measure this machine's speed (the second logging window, after warm-up,
    # from the run's TensorBoard log), then size the run to the budget.
    probe_dir = Path(output_dir) / "probe"
    started = time.perf_counter()
    recipe.main(["--config", str(CONFIG), "--output_dir", str(probe_dir), "--max_steps", "20",
                 "--logging_steps", "10", "--eval_steps", "0", "--save_steps", "0", "--seed", str(seed),
                 "--resume_from_checkpoint", "no"])  # fmt: skip
    per_step = _seconds_per_step(probe_dir) or (time.perf_counter() - started) / 20
    if steps is None:
        steps = int(max(50, min(400, seconds / max(per_step, 1e-3))))
    print(f"\n[demo] ~{per_step:.2f} s per step here: training {steps} steps.\n")
    final = recipe.main(["--config", str(CONFIG), "--output_dir", output_dir, "--max_steps", str(steps),
                         "--seed", str(seed), "--resume_from_checkpoint", "no",
                         "--eval_steps", str(max(steps // 4, 1)), "--save_steps", str(max(steps // 2, 1))])
    model = AutoModelForCausalLM.from_pretrained(final).eval()
    tokenizer = AutoTokenizer.from_pretrained(final)
    untrained = AutoModelForCausalLM.from_pretrained(probe_dir / "final").eval()
    texts = lm_dataset("validation")["text"][:20]
    before = perplexity(untrained, tokenizer, texts, block_size=model.config.max_position_embeddings)
    after = perplexity(model, tokenizer, texts, block_size=model.config.max_position_embeddings)
    ids = tokenizer(PROMPT, return_tensors="pt")
    torch.manual_seed(seed)
    sample = model.generate(**ids, max_new_tokens=40, do_sample=True, top_k=40, temperature=0.8,
                            pad_token_id=tokenizer.pad_token_id)
    report = {
        "steps": steps,
        "validation_perplexity_after_20_steps": before,
        "validation_perplexity_final": after,
        "validation_loss_after_20_steps": math.log(before),
        "validation_loss_final": math.log(after),
        "sample": tokenizer.decode(sample[0], skip_special_tokens=True),
        "folder": str(final),
    }
    (Path(output_dir) / "demo.json").write_text(json.dumps(report, indent=2))
    print(f"\n[demo] validation loss after 20 steps:  {math.log(before):.3f} (perplexity {before:.1f})")
    print(f"[demo] validation loss at the end:     {math.log(after):.3f} (perplexity {after:.1f})")
    print(f"[demo] sample: {report['sample']!r}")
    print(f"[demo] Hub-ready folder: {final} (model.safetensors, tokenizer, README.md, source files)")
    return final
