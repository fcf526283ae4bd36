"""``hfpm``: the zoo's command line (list, card, convert, average-checkpoints, align, demo, scaling)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .cards import model_card


def parameter_count(config) -> int:
    """Parameters of the model a config describes, built on the meta device (no memory used)."""
    import hf_paper_models

    classes = hf_paper_models.REGISTRY[config.model_type][1]
    model_class = next(iter(classes.values()))
    for auto_class, cls in classes.items():
        if auto_class.__name__ in ("AutoModelForCausalLM", "AutoModelForSeq2SeqLM"):
            model_class = cls
    with torch.device("meta"):
        model = model_class(config)
    return sum(p.numel() for p in model.parameters())


def human(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            digits = 2 if unit == "B" and n < 10 * scale else (1 if n < 100 * scale else 0)
            return f"{n / scale:.{digits}f}{unit}"
    return str(int(n))


def cmd_list(args: argparse.Namespace) -> int:
    from hf_paper_models.presets import PAPER_PARAMETERS, PRESETS, preset

    rows = [("model type", "preset", "parameters", "paper")]
    for name, model_type in PRESETS.items():
        count = parameter_count(preset(name))
        paper = PAPER_PARAMETERS.get(name)
        rows.append((model_type, name, f"{count:,} ({human(count)})", human(paper) if paper else "—"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(rows[0], widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows[1:]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    print(model_card(args.model_type))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from hf_paper_models import convert_from_transformers

    model = convert_from_transformers(args.source, model_type=args.model_type)
    model.save_pretrained(args.destination)
    try:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(args.source).save_pretrained(args.destination)
    except (OSError, ValueError):
        pass  # a checkpoint without a tokenizer converts all the same
    try:
        (Path(args.destination) / "README.md").write_text(
            model_card(model.config.model_type), encoding="utf-8"
        )
    except ValueError:
        pass
    print(
        f"{type(model).__name__} ({parameter_count(model.config):,} parameters) saved to {args.destination}"
    )
    return 0


def cmd_average(args: argparse.Namespace) -> int:
    """Average checkpoints (Vaswani et al. 2017, §6.1): the paths given, or the last ``--last`` of a
    recipe's output folder; config and tokenizer come from the newest checkpoint or ``--config-from``."""
    import shutil

    from .averaging import COMPANION_FILES, average_checkpoints
    from .training_utils import list_checkpoints

    paths = [Path(p) for p in args.checkpoints]
    if args.last is not None:
        if len(paths) != 1:
            raise ValueError("--last takes one run folder (the recipe's output_dir), not several paths.")
        found = list_checkpoints(paths[0])
        if len(found) < args.last:
            raise ValueError(f"--last {args.last}: {paths[0]} holds {len(found)} complete checkpoint(s).")
        paths = found[-args.last :]
    out = average_checkpoints(paths, args.output_dir)
    if args.config_from is not None:
        source = Path(args.config_from)
        if not (source / "config.json").is_file():
            raise ValueError(f"--config-from {source}: no config.json there.")
        for name in COMPANION_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, out / name)
    print(f"averaged {len(paths)} checkpoint(s): {', '.join(p.name for p in paths)} -> {out}")
    if not (out / "config.json").is_file():
        print(
            "note: no config.json came with the checkpoints; pass --config-from <a save_pretrained folder> "
            "(e.g. the run's final model) to make the folder loadable with from_pretrained."
        )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from hf_paper_models.demo import run_demo

    run_demo(output_dir=args.output_dir, seconds=args.seconds, seed=args.seed, steps=args.steps)
    return 0


def cmd_scaling(args: argparse.Namespace) -> int:
    """Predictable scaling (GPT-4 report, §3): a ladder of small runs, the fit L(C) = a·C^b + c, the target's
    loss predicted before it trains, then measured; DIR/scaling.json and DIR/scaling.png."""
    from .scaling import QUICK, ScalingSettings, run_scaling

    sizes = {"target_hidden": args.target_hidden, "target_layers": args.target_layers,
             "target_steps": args.target_steps, "rungs": args.rungs, "rung_seeds": args.rung_seeds,
             "equal_steps": args.equal_steps, "batch_exponent": args.batch_exponent,
             "tokens_per_parameter": args.tokens_per_parameter, "holdout_targets": args.holdout_targets,
             "count_output_layer": args.count_output_layer or None, "seed": args.seed}  # fmt: skip
    base = dict(QUICK) if args.quick else {}
    settings = ScalingSettings(**{**base, **{k: v for k, v in sizes.items() if v is not None}})
    result = run_scaling(settings, args.output_dir)
    for run in (result, *result["holdouts"]):
        print(f"[scaling] {run['target']['name']}: predicted {run['predicted_loss']:.4f}, measured "
              f"{run['actual_loss']:.4f}, relative error {100 * run['relative_error']:.2f}%")  # fmt: skip
    return 0


def cmd_instructgpt(args: argparse.Namespace) -> int:
    """SFT -> reward model -> PPO-ptx on the embedded tasks (Ouyang et al. 2022), then the report."""
    from transformers import HfArgumentParser

    from hf_paper_models.instructgpt import InstructGPTArguments, run_instructgpt

    parser = HfArgumentParser(InstructGPTArguments)
    values = {}
    if args.config:
        import yaml

        values = yaml.safe_load(Path(args.config).read_text()) or {}
    values["output_dir"] = args.output_dir
    (settings,) = (
        parser.parse_dict(values)
        if not args.options
        else parser.parse_args_into_dataclasses([f"--{k}={v}" for k, v in values.items()] + args.options)
    )
    report = run_instructgpt(settings)
    keys = ("win_rate_ppo_vs_sft", "win_rate_ppo_vs_sft_greedy", "reward_sft", "reward_ppo", "kl",
            "ptx_loss_sft", "ptx_loss_ppo")  # fmt: skip
    for key in keys:
        print(f"[instructgpt] {key}: {report[key]:.4f}")
    print(
        f"[instructgpt] folders: {args.output_dir}/sft, /reward, /ppo; report: {args.output_dir}/report.json, report.png"
    )
    return 0


def cmd_align(args: argparse.Namespace) -> int:
    """Translate a sentence with a saved sequence-to-sequence model and draw its alignment matrix as a PNG
    (Bahdanau et al. 2015, Figure 3)."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    import hf_paper_models  # noqa: F401  (registers the model types)

    from .evaluation.alignment import plot_alignment

    if not Path(args.model).is_dir():
        raise ValueError(f"{args.model} is not a folder holding a saved model.")
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    except (OSError, ValueError) as err:
        raise ValueError(f"No tokenizer in {args.tokenizer or args.model} (pass --tokenizer): {err}") from err
    model = AutoModelForSeq2SeqLM.from_pretrained(args.model)
    alignment = plot_alignment(
        model, tokenizer, args.source, args.output, num_beams=args.num_beams,
        max_new_tokens=args.max_new_tokens,
    )  # fmt: skip
    rows, columns = alignment.weights.shape
    print(f"{alignment.translation}\nalignment ({rows} target x {columns} source tokens) -> {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hfpm", description="hf_paper_models: the papers' models as transformers models."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="model types, presets and their parameter counts").set_defaults(func=cmd_list)
    card = sub.add_parser("card", help="print a model type's model card")
    card.add_argument("model_type")
    card.set_defaults(func=cmd_card)
    convert = sub.add_parser("convert", help="convert a transformers checkpoint folder into ours")
    convert.add_argument("source")
    convert.add_argument("destination")
    convert.add_argument("--model-type", default=None, help="target when several fit (e.g. paper-gpt3)")
    convert.set_defaults(func=cmd_convert)
    average = sub.add_parser(
        "average-checkpoints", help="average the weights of checkpoints (the Transformer paper, §6.1)"
    )
    average.add_argument(
        "checkpoints", nargs="+", help="checkpoint folders or .safetensors files, oldest first"
    )
    average.add_argument("--output-dir", "-o", required=True)
    average.add_argument(
        "--last", type=int, default=None, help="average the last N checkpoint-* of one run folder"
    )
    average.add_argument(
        "--config-from", default=None, help="copy config/tokenizer from this save_pretrained folder"
    )
    average.set_defaults(func=cmd_average)
    align = sub.add_parser("align", help="draw a translation's alignment matrix as a PNG (RNNsearch Fig. 3)")
    align.add_argument("model", help="a saved sequence-to-sequence model folder (e.g. a recipe's final/)")
    align.add_argument("source", help="the source sentence")
    align.add_argument("--output", "-o", default="alignment.png")
    align.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model folder)")
    align.add_argument("--num-beams", type=int, default=1)
    align.add_argument("--max-new-tokens", type=int, default=None)
    align.set_defaults(func=cmd_align)
    instruct = sub.add_parser(
        "instructgpt",
        help="SFT -> reward model -> PPO-ptx on the embedded tasks, with a labeler-judged report",
    )
    instruct.add_argument("--output-dir", default="runs/instructgpt")
    instruct.add_argument("--config", default=None, help="a YAML file of InstructGPTArguments fields")
    instruct.epilog = "Any InstructGPTArguments field is an option too: --ppo_rollouts 10 --kl_coef 0.05 ..."
    instruct.set_defaults(func=cmd_instructgpt)
    demo = sub.add_parser("demo", help="train a tiny GPT-2 on the embedded corpus and save it")
    demo.add_argument("--output-dir", default="runs/demo")
    demo.add_argument("--seconds", type=float, default=120.0)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--steps", type=int, default=None, help="train exactly this many steps (overrides --seconds)"
    )
    demo.set_defaults(func=cmd_demo)
    scaling = sub.add_parser(
        "scaling", help="predict a GPT-3-style run's final loss from a ladder of small runs (GPT-4 report §3)"
    )
    scaling.add_argument("--output-dir", default="runs/scaling")
    scaling.add_argument("--target-hidden", type=int, default=None, help="the target's width (default 128)")
    scaling.add_argument("--target-layers", type=int, default=None, help="the target's depth (default 4)")
    scaling.add_argument(
        "--target-steps",
        type=int,
        default=None,
        help="the target's tokens, in steps of 16 x 64 tokens (default 3000: 3.07M tokens)",
    )
    scaling.add_argument("--rungs", type=int, default=None, help="compute points of the ladder (default 9)")
    scaling.add_argument("--rung-seeds", type=int, default=None, help="seeds per compute point (default 2)")
    scaling.add_argument(
        "--equal-steps",
        type=int,
        default=None,
        help="optimiser steps of every run, batch grown with its tokens (default 750; 0: one batch)",
    )
    scaling.add_argument(
        "--batch-exponent",
        type=float,
        default=None,
        help="batch ∝ tokens^this, anchored at the target (default 1: equal steps; 0.5: sqrt)",
    )
    scaling.add_argument(
        "--tokens-per-parameter",
        type=float,
        default=None,
        help="the target's tokens per parameter of N (default 0: --target-steps)",
    )
    scaling.add_argument(
        "--count-output-layer",
        action="store_true",
        help="N counts the output layer's vocab x width weights as well as the non-embedding ones",
    )
    scaling.add_argument(
        "--holdout-targets",
        default=None,
        help="further targets WIDTHxLAYERS,... at the main target's tokens per parameter",
    )
    scaling.add_argument("--seed", type=int, default=None)
    scaling.add_argument("--quick", action="store_true", help="a study of seconds that checks the pipeline")
    scaling.set_defaults(func=cmd_scaling)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "instructgpt":
        args.options = extra  # the pipeline's own fields, parsed by HfArgumentParser
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except ValueError as err:
        print(f"hfpm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
