"""GPT-4 (OpenAI 2023) on the embedded image tasks: "image and text inputs [...] text outputs" (§1-2).
``gpt4-tiny`` learns to answer a question about a rendered picture (its shapes' kind, colour, count or
position); the loss is the next-token loss on the assistant's answer only (the picture, system and
question are context), then greedy answers on held-out pictures are scored by exact match.

    python training/train_gpt4_images.py --config training/configs/gpt4_tiny_images.yaml
    python training/train_gpt4_images.py --config training/configs/gpt4_tiny_images.yaml --max_steps 20 \\
        --output_dir runs/try
    accelerate launch --multi_gpu --num_processes 2 training/train_gpt4_images.py --config ...   # DDP
    python training/train_gpt4_images.py --config training/configs/gpt4_tiny_images.yaml \\
        --dataset my_vqa.jsonl --image_column file --question_column question --answer_column answer

The data are ``hf_paper_models.data.images`` (train and held-out pictures from separate seeds) or, with
``--dataset``, a real one: a ``datasets`` name, an ``imagefolder`` (``metadata.jsonl`` beside the
pictures) or a JSON-lines/CSV file whose image column holds paths (relative to the file's folder), PIL
images or ``{"bytes"|"path"}`` records, beside a question and an answer column (``--image_column``,
``--question_column``, ``--answer_column``; ``--kind_column`` groups the scores, else one group "all").
Its ``validation`` split (or ``validation_split_percentage`` of train) is the held-out set; ``num_train``
and ``num_eval`` cap both. Each example is one chat through the processor's template: ``[system?, user: <image> + question, assistant:
answer]``. At the end ``output_dir/results.json`` holds the held-out exact-match accuracy beside the
majority-class baseline (the most common training answer of each question kind), both per question kind
too, and a few sample answers; ``output_dir/final`` holds the model and the processor (loads with
``AutoModelForImageTextToText`` / ``AutoProcessor`` after ``import hf_paper_models``). Resumes from the
latest checkpoint in ``output_dir`` and logs to TensorBoard like the other recipes
(``hf_paper_models.training_utils``).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForImageTextToText, default_data_collator

from hf_paper_models import preset
from hf_paper_models.data.images import QUESTIONS, majority_baseline, split_tasks
from hf_paper_models.models.gpt4 import PaperGPT4Processor
from hf_paper_models.tokenizers import image_chat_tokenizer
from hf_paper_models.training_utils import (
    PresetArguments,
    TrainingLoopArguments,
    flat_config,
    load_text_dataset,
    make_accelerator,
    parse_args,
    save_final,
    train_loop,
)

IGNORE_INDEX = -100  # the label of positions without loss (transformers' cross-entropy default)


@dataclass
class ImageTaskArguments(PresetArguments):
    preset: str = field(default="gpt4-tiny", metadata={"help": "A paper-gpt4 preset."})
    model_overrides: dict | str | None = field(
        default=None, metadata={"help": 'Other config fields, as a mapping (YAML) or JSON ({"dropout": 0}).'}
    )
    tokenizer_cache_dir: str | None = field(default=None, metadata={"help": "Reuse the trained tokenizer."})
    dataset: str = field(
        default="embedded",
        metadata={
            "help": "'embedded' (the rendered pictures), a datasets name, imagefolder, or a JSON/CSV file."
        },
    )
    dataset_config: str | None = None
    data_files: list[str] | None = field(default=None, metadata={"help": "Files for a builder dataset."})
    image_column: str = field(default="image", metadata={"help": "Images: PIL, a path, or {bytes|path}."})
    question_column: str = "question"
    answer_column: str = "answer"
    kind_column: str | None = field(default=None, metadata={"help": "Groups the scores (else one group)."})
    validation_split_percentage: int = field(
        default=10, metadata={"help": "Held-out share of train when the dataset has no validation split."}
    )
    num_train: int = field(default=4000, metadata={"help": "Training pictures with their questions (a cap)."})
    num_eval: int = field(default=400, metadata={"help": "Held-out pictures (another seed; a cap)."})
    data_seed: int = 0
    system_message: str | None = field(
        default="Answer with one word.", metadata={"help": "The system turn of every chat; '' for none."}
    )
    max_new_tokens: int = field(default=4, metadata={"help": "Greedy answer length at evaluation."})
    num_samples: int = field(default=8, metadata={"help": "Held-out answers written to results.json."})

    def __post_init__(self) -> None:
        self.check_preset(AutoModelForImageTextToText, "has no image-text-to-text head")  # paper-gpt4 only
        if self.num_train < 1 or self.num_eval < 1:
            raise ValueError(
                f"num_train and num_eval must be >= 1, got {self.num_train} and {self.num_eval}."
            )


@dataclass(frozen=True)
class Example:
    """One picture, question and answer of a real dataset; ``kind`` groups the scores. The embedded
    ``ImageTask`` has the same fields, so both go through ``encode``/``answer_held_out``/``score``."""

    image: Any  # (H, W, 3) uint8 array
    kind: str
    question: str
    answer: str


def _to_array(value: Any, base: Path | None) -> np.ndarray:
    """An RGB uint8 array from a PIL image, a path (relative to ``base``) or a ``{bytes|path}`` record."""
    from io import BytesIO

    from PIL import Image

    if isinstance(value, dict):
        value = BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if not path.is_absolute() and base is not None and not path.exists():
            path = base / path
        value = Image.open(path)
    elif isinstance(value, BytesIO):
        value = Image.open(value)
    if hasattr(value, "convert"):
        return np.asarray(value.convert("RGB"))
    return np.asarray(value)


def _data_dir(args: ImageTaskArguments) -> Path | None:
    """Where relative image paths of a local dataset are found: the data file's (or files') folder."""
    if os.path.isfile(args.dataset):
        return Path(args.dataset).resolve().parent
    if os.path.isdir(args.dataset):
        return Path(args.dataset).resolve()
    if args.data_files:
        return Path(args.data_files[0]).resolve().parent
    return None


def load_examples(args: ImageTaskArguments, seed: int) -> tuple[list[Any], list[Any]]:
    """Train and held-out examples: the embedded tasks, or ``args.dataset`` read through ``datasets``."""
    if args.dataset in (None, "", "embedded"):
        return split_tasks(args.num_train, args.num_eval, seed=args.data_seed)
    raw = load_text_dataset(
        args.dataset,
        config_name=args.dataset_config,
        data_files=args.data_files,
        validation_split_percentage=args.validation_split_percentage,
        seed=seed,
    )
    columns = [args.image_column, args.question_column, args.answer_column]
    columns += [args.kind_column] if args.kind_column else []
    base = _data_dir(args)
    out = []
    for split, cap in (("train", args.num_train), ("validation", args.num_eval)):
        data = raw[split]
        missing = [c for c in columns if c not in data.column_names]
        if missing:
            raise ValueError(
                f"Dataset {args.dataset!r} ({split} split) has no column(s) {missing} (columns: "
                f"{data.column_names}); set --image_column/--question_column/--answer_column/--kind_column."
            )
        data = data.select(range(min(cap, len(data))))
        out.append([
            Example(
                image=_to_array(row[args.image_column], base),
                kind=str(row[args.kind_column]) if args.kind_column else "all",
                question=str(row[args.question_column]).strip(),
                answer=str(row[args.answer_column]).strip(),
            )
            for row in data
        ])  # fmt: skip
    if not out[0] or not out[1]:
        raise ValueError(
            f"Dataset {args.dataset!r} gives {len(out[0])} train / {len(out[1])} held-out examples."
        )
    return out[0], out[1]


def chat(task: Any, system: str | None, answer: bool) -> list[dict[str, Any]]:
    """The example as chat messages; the assistant turn (the answer) only when ``answer``."""
    out = [{"role": "system", "content": system}] if system else []
    out.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": task.question}]})
    if answer:
        out.append({"role": "assistant", "content": task.answer})
    return out


def prompt_inputs(processor: PaperGPT4Processor, task: Any, system: str | None) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``pixel_values`` of the prompt up to the assistant's turn."""
    text = processor.apply_chat_template(
        chat(task, system, False), add_generation_prompt=True, tokenize=False
    )
    return processor(images=task.image, text=text, return_tensors="pt")


def encode(
    processor: PaperGPT4Processor, tasks: list[Any], system: str | None
) -> list[dict[str, torch.Tensor]]:
    """Training rows padded to one length: labels are the answer tokens and the end-of-turn token (the
    assistant turn of the template's ``{% generation %}`` block); the picture, system and question
    positions, and padding, carry ``IGNORE_INDEX``."""
    tokenizer = processor.tokenizer
    rows = []
    for task in tasks:
        prompt = prompt_inputs(processor, task, system)
        text = processor.apply_chat_template(chat(task, system, True), tokenize=False)
        ids = processor(images=task.image, text=text, return_tensors="pt")["input_ids"][0]
        start = prompt["input_ids"].shape[1]
        if not torch.equal(ids[:start], prompt["input_ids"][0]):  # the answer must not re-tokenize the prompt
            raise ValueError(f"The prompt's tokens change when the answer {task.answer!r} follows them.")
        if ids[-1] != tokenizer.eos_token_id:  # the template ends an assistant turn at its end token
            raise ValueError(f"The chat template put {tokenizer.decode(ids[-1:])!r} after the answer's end token.")
        labels = ids.clone()
        labels[:start] = IGNORE_INDEX
        rows.append({"input_ids": ids, "labels": labels, "pixel_values": prompt["pixel_values"][0]})
    width = max(len(r["input_ids"]) for r in rows)
    for r in rows:
        pad = width - len(r["input_ids"])
        r["attention_mask"] = torch.cat(
            [torch.ones(len(r["input_ids"]), dtype=torch.long), torch.zeros(pad, dtype=torch.long)]
        )
        r["input_ids"] = torch.cat([r["input_ids"], torch.full((pad,), tokenizer.pad_token_id)])
        r["labels"] = torch.cat([r["labels"], torch.full((pad,), IGNORE_INDEX)])
    return rows


def answer_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]):
    """Mean next-token cross-entropy over the answer tokens (the model shifts ``labels``), with the
    share of answer tokens predicted right logged beside it."""
    out = model(**batch)
    predicted = out.logits[:, :-1].argmax(-1)
    target = batch["labels"][:, 1:]
    mask = target != IGNORE_INDEX
    accuracy = (predicted[mask] == target[mask]).float().mean()
    return out.loss, {"answer_token_accuracy": accuracy.detach()}


@torch.no_grad()
def answer_held_out(
    model: torch.nn.Module,
    processor: PaperGPT4Processor,
    tasks: list[Any],
    system: str | None,
    max_new_tokens: int,
    batch_size: int,
) -> list[str]:
    """Greedy answers, decoded without special tokens and stripped. Prompts are batched by their token
    count, so no batch needs padding (the embedded tasks' text is fixed per question kind)."""
    model.eval()
    tokenizer = processor.tokenizer
    answers: list[str] = [""] * len(tasks)
    prompts = [prompt_inputs(processor, task, system) for task in tasks]
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, prompt in enumerate(prompts):
        by_length[prompt["input_ids"].shape[1]].append(i)
    for indices in by_length.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            input_ids = torch.cat([prompts[i]["input_ids"] for i in chunk]).to(model.device)
            pixel_values = torch.cat([prompts[i]["pixel_values"] for i in chunk]).to(model.device)
            out = model.generate(
                input_ids=input_ids,
                pixel_values=pixel_values,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
            for i, row in zip(chunk, out[:, input_ids.shape[1] :]):
                answers[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
    return answers


def score(train: list[Any], held_out: list[Any], answers: list[str]) -> dict[str, Any]:
    """Exact-match accuracy (after stripping whitespace) and the majority baseline, overall and per kind
    (the embedded kinds in ``QUESTIONS`` order, others in order of appearance)."""
    per_kind = {}
    kinds = [k for k in QUESTIONS if any(t.kind == k for t in held_out)]
    kinds += list(dict.fromkeys(t.kind for t in held_out if t.kind not in kinds))
    for kind in kinds:
        idx = [i for i, t in enumerate(held_out) if t.kind == kind]
        if idx:
            per_kind[kind] = {
                "n": len(idx),
                "accuracy": sum(answers[i] == held_out[i].answer for i in idx) / len(idx),
                "majority_baseline": majority_baseline(train, [held_out[i] for i in idx]),
            }
    return {
        "accuracy": sum(a == t.answer for a, t in zip(answers, held_out)) / len(held_out),
        "majority_baseline": majority_baseline(train, held_out),
        "n_held_out": len(held_out),
        "per_question_type": per_kind,
    }


def main(argv: list[str] | None = None) -> Path:
    loop_args, args = parse_args([TrainingLoopArguments, ImageTaskArguments], argv)
    config = preset(args.preset, **args.config_overrides())
    accelerator = make_accelerator(loop_args)
    with accelerator.main_process_first():  # trains the tokenizer once (cached in tokenizer_cache_dir)
        tokenizer = image_chat_tokenizer(cache_dir=args.tokenizer_cache_dir)
    if (
        len(tokenizer) != config.vocab_size
        or tokenizer.convert_tokens_to_ids("<image>") != config.image_token_id
    ):
        raise ValueError(
            f"{args.preset}'s vocabulary ({config.vocab_size}, <image> = {config.image_token_id}) does not match "
            f"image_chat_tokenizer() ({len(tokenizer)} tokens)."
        )
    processor = PaperGPT4Processor.for_model(config, tokenizer)
    system = args.system_message or None
    with accelerator.main_process_first():  # a real dataset is prepared (and cached) once
        train, held_out = load_examples(args, loop_args.seed)
    train_rows, eval_rows = encode(processor, train, system), encode(processor, held_out, system)
    model = AutoModelForImageTextToText.from_config(config)
    accelerator.print(
        f"{args.preset}: {model.num_parameters() / 1e6:.2f}M parameters, {len(train)} train / {len(held_out)} "
        f"held-out pictures, {len(train_rows[0]['input_ids'])} tokens per example, "
        f"{accelerator.num_processes} process(es)."
    )
    train_loader = DataLoader(
        train_rows, batch_size=loop_args.per_device_train_batch_size, shuffle=True, drop_last=True,
        collate_fn=default_data_collator, num_workers=loop_args.dataloader_num_workers,
    )  # fmt: skip
    eval_loader = DataLoader(
        eval_rows, batch_size=loop_args.per_device_eval_batch_size, collate_fn=default_data_collator
    )
    result = train_loop(
        accelerator, model, train_loader, answer_loss, loop_args, eval_loader,
        tracker_config=flat_config(loop_args, args),
    )  # fmt: skip
    # Every process reports its part (the DDP test checks that each of them trained).
    print(
        f"process {accelerator.process_index}/{accelerator.num_processes}: {result.step} optimizer steps",
        flush=True,
    )
    final = save_final(accelerator, result.model, processor, loop_args.output_dir)
    if accelerator.is_main_process:  # generation is per-example, no collective: the main process alone
        unwrapped = accelerator.unwrap_model(result.model)
        answers = answer_held_out(
            unwrapped, processor, held_out, system, args.max_new_tokens, loop_args.per_device_eval_batch_size
        )
        results = {
            "step": result.step,
            "train_loss": result.train_loss,
            "eval_answer_loss": result.eval_loss,
            **score(train, held_out, answers),
            "samples": [
                {"kind": t.kind, "question": t.question, "answer": t.answer, "generated": a}
                for t, a in list(zip(held_out, answers))[: args.num_samples]
            ],
        }
        (Path(loop_args.output_dir) / "results.json").write_text(json.dumps(results, indent=2))
        accelerator.print(
            f"Held-out accuracy {results['accuracy']:.3f} vs majority baseline {results['majority_baseline']:.3f}; "
            + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in results["per_question_type"].items())
        )
    accelerator.wait_for_everyone()  # the others wait for results.json before the group ends
    accelerator.end_training()
    return final


if __name__ == "__main__":
    main()
