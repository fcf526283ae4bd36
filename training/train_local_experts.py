"""Adaptive mixtures of local experts (Jacobs, Jordan, Nowlan & Hinton 1991) on the vowel task (§4):
four experts and a gating network learn to tell [i], [ɪ], [a] and [ʌ] apart from two formants, with the
paper's competitive loss (or the cooperative one, ``--moe_loss cooperative``).

    python training/train_local_experts.py --config training/configs/local_experts_vowel.yaml
    python training/train_local_experts.py --config training/configs/local_experts_vowel.yaml \\
        --moe_loss cooperative --output_dir runs/local_experts_cooperative

The data are the synthetic multi-speaker vowels of ``hf_paper_models.data.vowels`` (train and test
speakers apart). Logs the loss and the training accuracy to TensorBoard; at the end writes
``output_dir/results.json`` (test accuracy, and for each vowel the share of its test cases that each
expert owns by the gate's argmax: the experts' specialisation) and the model to ``output_dir/final``.
Resumes from the latest checkpoint in ``output_dir`` like the other recipes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, default_data_collator

from hf_paper_models import PRESETS, preset
from hf_paper_models.data.vowels import VOWELS, make_vowel_data, split_by_speaker
from hf_paper_models.training_utils import (
    TrainingLoopArguments,
    flat_config,
    make_accelerator,
    parse_args,
    save_final,
    train_loop,
)


@dataclass
class LocalExpertsArguments:
    preset: str = field(default="local-experts-vowel", metadata={"help": "A paper-local-experts preset."})
    moe_loss: Literal["competitive", "cooperative"] = "competitive"
    num_experts: int | None = None
    hidden_size: int | None = field(default=None, metadata={"help": "None: single-layer experts (the paper's)."})
    num_speakers: int = 75
    num_train_speakers: int = 50
    utterances_per_vowel: int = 2
    data_seed: int = 0
    speaker_order: Literal["shuffled", "peterson_barney"] = field(
        default="shuffled",
        metadata={"help": "peterson_barney: men, women, children, so the first speakers train as in the paper."},
    )

    def __post_init__(self) -> None:
        if PRESETS.get(self.preset) != "paper-local-experts":
            raise ValueError(f"`preset`={self.preset!r} is not a paper-local-experts preset.")
        if not 1 <= self.num_train_speakers < self.num_speakers:
            raise ValueError(
                f"`num_train_speakers`={self.num_train_speakers} must be in [1, num_speakers={self.num_speakers})."
            )


def rows(data: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    return [{"input_values": x, "labels": y} for x, y in zip(data["input_values"], data["labels"])]


def mixture_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]):
    """The configured mixture loss, with the batch accuracy logged beside it."""
    out = model(input_values=batch["input_values"], labels=batch["labels"])
    accuracy = (out.logits.argmax(-1) == batch["labels"]).float().mean()
    return out.loss, {"accuracy": accuracy}


@torch.no_grad()
def specialisation(model: torch.nn.Module, data: dict[str, torch.Tensor]) -> dict:
    """Test accuracy, and per vowel the share of its cases each expert owns (the gate's argmax)."""
    model.eval()
    out = model(input_values=data["input_values"].to(model.device))
    labels = data["labels"].to(model.device)
    owner = out.gate_probs.argmax(-1)
    num_experts = out.gate_probs.shape[-1]
    shares = {
        vowel: torch.bincount(owner[labels == v], minlength=num_experts).float().div(
            max(int((labels == v).sum()), 1)).tolist()
        for v, vowel in enumerate(VOWELS)
    }
    return {"test_accuracy": (out.logits.argmax(-1) == labels).float().mean().item(), "expert_share": shares}


def main(argv: list[str] | None = None) -> Path:
    loop_args, args = parse_args([TrainingLoopArguments, LocalExpertsArguments], argv)
    overrides = {"moe_loss": args.moe_loss, "hidden_size": args.hidden_size}
    if args.num_experts is not None:
        overrides["num_experts"] = args.num_experts
    config = preset(args.preset, **overrides)
    accelerator = make_accelerator(loop_args)
    data = make_vowel_data(args.num_speakers, args.utterances_per_vowel, seed=args.data_seed,
                           speaker_order=args.speaker_order)
    train, test = split_by_speaker(data, args.num_train_speakers)
    model = AutoModelForSequenceClassification.from_config(config)
    accelerator.print(
        f"{args.preset} ({args.moe_loss} loss): {model.num_parameters()} parameters, {len(train['labels'])} "
        f"train / {len(test['labels'])} test cases."
    )
    train_loader = DataLoader(
        rows(train), batch_size=loop_args.per_device_train_batch_size, shuffle=True, drop_last=True,
        collate_fn=default_data_collator,
    )
    test_loader = DataLoader(rows(test), batch_size=loop_args.per_device_eval_batch_size,
                             collate_fn=default_data_collator)
    result = train_loop(
        accelerator, model, train_loader, mixture_loss, loop_args, test_loader,
        tokens_per_batch=lambda batch: batch["input_values"].shape[0],  # cases per second
        tracker_config=flat_config(loop_args, args),
    )
    final = save_final(accelerator, result.model, None, loop_args.output_dir)
    if accelerator.is_main_process:
        results = {"step": result.step, "train_loss": result.train_loss, "test_loss": result.eval_loss,
                   **specialisation(accelerator.unwrap_model(result.model), test)}
        (Path(loop_args.output_dir) / "results.json").write_text(json.dumps(results, indent=2))
        accelerator.print(json.dumps(results))
    accelerator.end_training()
    return final


if __name__ == "__main__":
    main()
