"""The three stages of InstructGPT (Ouyang et al. 2022, §3.5 and Figure 2) as library functions, each
loading what the previous one saved and saving a folder that loads on its own with ``AutoModelFor…``
(weights, tokenizer, model card):

1. ``sft_stage``: supervised fine-tuning of a pretrained GPT on demonstrations (TRL ``SFTTrainer``,
   loss on the assistant turns only);
2. ``reward_stage``: a reward model initialised from the SFT model with its unembedding replaced by a
   scalar head (§3.5 "we start from the SFT model with the final unembedding layer removed"), trained
   on K-wise rankings (all C(K,2) comparisons of one prompt in one batch element) of programmatic
   candidates and of SFT samples, then shifted so that SFT samples score 0 on average;
3. ``ppo_stage``: PPO-ptx from the SFT policy, the value function initialised from the reward model,
   the frozen SFT model as the KL reference, and the pretraining term on the embedded corpus.

``evaluate_stage`` compares the PPO policy with the SFT policy on held-out prompts (held out by task
template) with the programmatic labeler as the judge, and measures the pretraining loss of both.
The scripts in ``training/instructgpt/`` parse a YAML recipe and call these; ``hfpm instructgpt``
runs them all.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.instructions import InstructionTask, compare, kwise_dataset, label, prompt_dataset, sft_dataset
from ..evaluation.perplexity import perplexity
from ..evaluation.win_rate import generate_responses, win_rate
from .ppo import logprobs_from_logits

__all__ = [
    "EvaluationArguments",
    "PPOStageArguments",
    "RewardStageArguments",
    "SFTStageArguments",
    "evaluate_stage",
    "ppo_stage",
    "reward_stage",
    "sft_stage",
    "write_stage_card",
]


def _require(args: Any, name: str, ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"{type(args).__name__}: `{name}` must be {what}, got {getattr(args, name)!r}.")


@dataclass
class SFTStageArguments:
    """What the SFT stage trains on (the optimisation itself is TRL's ``SFTConfig``)."""

    model_path: str = field(default="", metadata={"help": "The pretrained causal LM to fine-tune (a folder)."})
    tokenizer_path: str | None = field(default=None, metadata={"help": "Default: the model folder's."})
    dataset: str = field(
        default="embedded",
        metadata={"help": "'embedded' demonstrations, or a dataset name/file with `messages` (see "
                  "hf_paper_models.data.instructions.load_instruction_dataset)."},
    )  # fmt: skip
    num_examples: int = field(default=4000, metadata={"help": "Embedded demonstrations to draw."})
    task_seed: int = field(default=0, metadata={"help": "Seeds the embedded tasks drawn."})

    def __post_init__(self) -> None:
        _require(self, "num_examples", self.num_examples >= 1, "an integer >= 1")


@dataclass
class RewardStageArguments:
    """What the reward model trains on (the optimisation itself is ``KWiseRewardConfig``)."""

    sft_path: str = field(default="", metadata={"help": "The SFT model folder (the RM starts from it)."})
    dataset: str = "embedded"
    num_prompts: int = field(default=1500, metadata={"help": "Embedded prompts with programmatic candidates."})
    num_policy_prompts: int = field(
        default=300,
        metadata={"help": "Prompts whose K responses are sampled from the SFT policy and ranked by the "
                  "labeler (the paper's comparisons are of model outputs)."},
    )  # fmt: skip
    k_min: int = 4
    k_max: int = 9
    max_new_tokens: int = 32
    normalization_samples: int = field(
        default=256, metadata={"help": "SFT samples whose mean reward is shifted to 0 (0: no shift)."}
    )
    task_seed: int = field(default=0, metadata={"help": "Seeds the embedded tasks drawn."})

    def __post_init__(self) -> None:
        _require(self, "num_prompts", self.num_prompts >= 1, "an integer >= 1")
        _require(self, "num_policy_prompts", self.num_policy_prompts >= 0, "an integer >= 0")
        _require(self, "k_min", 2 <= self.k_min <= self.k_max, "2 <= k_min <= k_max")
        _require(self, "normalization_samples", self.normalization_samples >= 0, "an integer >= 0")


@dataclass
class PPOStageArguments:
    """What PPO-ptx trains on (the optimisation itself is ``PPOConfig``)."""

    sft_path: str = field(default="", metadata={"help": "The SFT policy (also the frozen KL reference)."})
    reward_path: str = field(default="", metadata={"help": "The reward model (also the value model's start)."})
    num_prompts: int = 2000
    ptx_documents: int = field(default=2000, metadata={"help": "Embedded corpus documents for the ptx term."})
    use_peft: bool = field(default=False, metadata={"help": "A LoRA policy; the reference is the adapter off."})
    lora_r: int = 16
    task_seed: int = field(default=0, metadata={"help": "Seeds the embedded tasks drawn."})

    def __post_init__(self) -> None:
        _require(self, "num_prompts", self.num_prompts >= 1, "an integer >= 1")


@dataclass
class EvaluationArguments:
    num_prompts: int = field(default=200, metadata={"help": "Held-out prompts (unseen task templates)."})
    max_new_tokens: int = 32
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the compared policies."})
    ptx_documents: int = field(default=200, metadata={"help": "Held-out corpus documents for the ptx loss."})
    seed: int = 1234


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _tasks(column: list[str]) -> list[InstructionTask]:
    return [InstructionTask.from_json(t) for t in column]


def write_stage_card(folder: str | Path, stage: str, details: dict[str, Any] | None = None) -> None:
    """README.md for a stage's folder: the pipeline's card with the stage named and its measured figures."""
    folder = Path(folder)
    from ..cards import model_card

    try:
        text = model_card("instructgpt")
    except ValueError:  # an installation without the repository's model_cards/
        text = "# InstructGPT pipeline\n"
    lines = [f"\n## This folder: the {stage} stage\n"]
    for key, value in (details or {}).items():
        lines.append(f"- `{key}`: {value}")
    (folder / "README.md").write_text(text.rstrip() + "\n" + "\n".join(lines) + "\n", encoding="utf-8")


def _move_final(tmp: Path, final: Path) -> None:
    """Replace ``final`` by ``tmp`` (written completely first, so an interruption never leaves a half folder)."""
    if final.exists():
        backup = final.with_name(final.name + ".old")
        shutil.rmtree(backup, ignore_errors=True)
        final.rename(backup)
        tmp.rename(final)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        tmp.rename(final)


def use_cpu_group_under_launcher() -> None:
    """Under a launcher (``WORLD_SIZE`` > 1) on a machine without an accelerator, tell transformers'
    Trainer to form a gloo group (``ACCELERATE_USE_CPU``): otherwise every process trains alone as rank 0
    (``training_utils.make_accelerator`` does the same for our own loops). Call before parsing the config."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available():
        os.environ["ACCELERATE_USE_CPU"] = "true"


def _check_world(accelerator: Any) -> None:
    """Under a launcher (``WORLD_SIZE`` > 1) every process must have joined one group: otherwise each trains
    alone as rank 0 and they overwrite each other's output (on CPU, pass ``use_cpu=True``)."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and accelerator.num_processes != world:
        raise ValueError(
            f"Launched as {world} processes but the trainer formed a group of {accelerator.num_processes}: on a "
            "machine without GPUs set use_cpu=True (or ACCELERATE_USE_CPU=true) so that they form a gloo group."
        )


def _load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.chat_template is None:
        raise ValueError(f"The tokenizer in {path} has no chat template (use hf_paper_models.tokenizers.chat_tokenizer).")
    return tokenizer


# ----------------------------------------------------------------------------------------------
# 1. SFT
# ----------------------------------------------------------------------------------------------


def sft_stage(args: SFTStageArguments, sft_config: Any, output_dir: str | Path) -> Path:
    """Fine-tune ``args.model_path`` on demonstrations with TRL's ``SFTTrainer`` (``assistant_only_loss``
    so only the assistant turns are learned, as in the paper's demonstrations); save into ``output_dir``
    (checkpoints go to ``sft_config.output_dir`` and resume from there)."""
    import trl
    from transformers import AutoModelForCausalLM

    from ..data.instructions import load_instruction_dataset

    tokenizer = _load_tokenizer(args.tokenizer_path or args.model_path)
    if args.dataset == "embedded":
        dataset = sft_dataset(args.num_examples, "train", seed=args.task_seed).select_columns(["messages"])
    else:
        dataset = load_instruction_dataset(args.dataset, "sft")
    model = AutoModelForCausalLM.from_pretrained(args.model_path)
    trainer = trl.SFTTrainer(model=model, args=sft_config, train_dataset=dataset, processing_class=tokenizer)
    _check_world(trainer.accelerator)
    checkpoint = _last_trainer_checkpoint(sft_config.output_dir)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    output_dir = Path(output_dir)
    if trainer.accelerator.is_main_process:
        tmp = output_dir.with_name(output_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        trainer.save_model(str(tmp))
        tokenizer.save_pretrained(tmp)
        write_stage_card(tmp, "SFT", {"train_loss": round(result.training_loss, 4), "steps": result.global_step})
        _move_final(tmp, output_dir)
    trainer.accelerator.wait_for_everyone()
    return output_dir


def _last_trainer_checkpoint(folder: str) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(folder) if Path(folder).is_dir() else None


# ----------------------------------------------------------------------------------------------
# 2. Reward model
# ----------------------------------------------------------------------------------------------


def policy_rankings(
    model: Any, tokenizer: Any, prompts: Any, k_min: int, k_max: int, max_new_tokens: int, seed: int
) -> dict[str, list]:
    """K sampled responses per prompt (K drawn from k_min..k_max), scored by the labeler: the K-wise
    columns ``prompt``, ``responses``, ``scores``. Duplicate samples are kept once."""
    import random

    rng = random.Random(seed)
    ks = [rng.randint(k_min, k_max) for _ in range(len(prompts))]
    expanded = [p for p, k in zip(prompts["prompt"], ks) for _ in range(k)]
    samples = generate_responses(model, tokenizer, expanded, max_new_tokens=max_new_tokens, seed=seed)
    columns: dict[str, list] = {"prompt": [], "responses": [], "scores": [], "task": []}
    start = 0
    for prompt, task_json, k in zip(prompts["prompt"], prompts["task"], ks):
        responses = list(dict.fromkeys(samples[start : start + k]))
        start += k
        if len(responses) < 2:
            continue
        task = InstructionTask.from_json(task_json)
        columns["prompt"].append(prompt)
        columns["responses"].append(responses)
        columns["scores"].append([float(label(task, r)) for r in responses])
        columns["task"].append(task_json)
    return columns


def reward_stage(args: RewardStageArguments, reward_config: Any, output_dir: str | Path) -> tuple[Path, dict]:
    """Train the reward model with the K-wise loss, normalise its bias on SFT samples, save it."""
    from datasets import Dataset, concatenate_datasets
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from .reward import KWiseRewardTrainer, normalize_reward_bias

    tokenizer = _load_tokenizer(args.sft_path)
    data = kwise_dataset(args.num_prompts, "train", seed=args.task_seed, k_min=args.k_min, k_max=args.k_max)
    data = data.select_columns(["prompt", "responses", "scores"])
    policy = None
    if args.num_policy_prompts or args.normalization_samples:
        policy = AutoModelForCausalLM.from_pretrained(args.sft_path)
    if args.num_policy_prompts:
        prompts = prompt_dataset(args.num_policy_prompts, "train", seed=args.task_seed + 1)
        sampled = policy_rankings(
            policy, tokenizer, prompts, args.k_min, args.k_max, args.max_new_tokens, seed=args.task_seed + 2
        )
        sampled = Dataset.from_dict({k: sampled[k] for k in ("prompt", "responses", "scores")})
        data = concatenate_datasets([data, sampled.cast(data.features)]).shuffle(seed=args.task_seed)
    model = AutoModelForSequenceClassification.from_pretrained(args.sft_path, num_labels=1, score_bias=True)
    held = data.train_test_split(test_size=min(200, len(data) // 10 or 1), seed=args.task_seed)
    trainer = KWiseRewardTrainer(
        model=model, args=reward_config, train_dataset=held["train"], eval_dataset=held["test"],
        processing_class=tokenizer,
    )  # fmt: skip
    _check_world(trainer.accelerator)
    trainer.train(resume_from_checkpoint=_last_trainer_checkpoint(reward_config.output_dir))
    metrics = trainer.evaluate()
    details: dict[str, Any] = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
    model = trainer.accelerator.unwrap_model(trainer.model)
    if args.normalization_samples:
        prompts = prompt_dataset(args.normalization_samples, "train", seed=args.task_seed + 3)
        responses = generate_responses(policy, tokenizer, prompts["prompt"], max_new_tokens=args.max_new_tokens,
                                       seed=args.task_seed + 4)  # fmt: skip
        details["bias_shift"] = round(float(normalize_reward_bias(model, tokenizer, prompts["prompt"], responses)), 4)
    output_dir = Path(output_dir)
    if trainer.accelerator.is_main_process:
        tmp = output_dir.with_name(output_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_stage_card(tmp, "reward model", details)
        _move_final(tmp, output_dir)
    trainer.accelerator.wait_for_everyone()
    return output_dir, details


# ----------------------------------------------------------------------------------------------
# 3. PPO-ptx
# ----------------------------------------------------------------------------------------------


def ppo_stage(args: PPOStageArguments, ppo_config: Any, output_dir: str | Path) -> tuple[Path, list[dict]]:
    """PPO-ptx from the SFT policy; returns the saved policy folder and the per-rollout log."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from .ppo import PPOTrainer

    tokenizer = _load_tokenizer(args.sft_path)
    policy = AutoModelForCausalLM.from_pretrained(args.sft_path)
    reference = None
    if args.use_peft:
        from peft import LoraConfig, get_peft_model

        policy = get_peft_model(policy, LoraConfig(r=args.lora_r, target_modules="all-linear", task_type="CAUSAL_LM"))
    else:
        reference = AutoModelForCausalLM.from_pretrained(args.sft_path)
    value_model = AutoModelForSequenceClassification.from_pretrained(args.reward_path)
    reward_model = AutoModelForSequenceClassification.from_pretrained(args.reward_path)
    prompts = prompt_dataset(args.num_prompts, "train", seed=args.task_seed + 5).select_columns(["prompt"])
    ptx = None
    if ppo_config.ptx_coef > 0:  # the pretraining distribution: the embedded corpus (cut into ptx_block_size)
        from ..data import lm_dataset

        ptx = lm_dataset("train", num_documents=args.ptx_documents)
    trainer = PPOTrainer(
        ppo_config, policy, reference, value_model, reward_model=reward_model, processing_class=tokenizer,
        train_dataset=prompts, ptx_dataset=ptx,
    )  # fmt: skip
    trainer.train()
    output_dir = Path(output_dir)
    tmp = output_dir.with_name(output_dir.name + ".tmp")
    main_process = trainer.accelerator.is_main_process
    if main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))  # collective (barriers inside); writes on the main process
    saved = (tmp / "config.json").is_file() or (tmp / "adapter_config.json").is_file()
    if main_process and saved:
        tokenizer.save_pretrained(tmp)
        last = trainer.history[-1] if trainer.history else {}
        write_stage_card(tmp, "PPO-ptx", {k: round(v, 4) for k, v in last.items() if isinstance(v, float)})
        _move_final(tmp, output_dir)
    trainer.accelerator.wait_for_everyone()
    return output_dir, list(trainer.history)


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def _response_logprob_sum(model: Any, tokenizer: Any, prompts: list, responses: list[str]) -> torch.Tensor:
    """Σ log π(response | prompt) per pair (response tokens plus the end-of-turn token)."""
    rows, starts = [], []
    for prompt, response in zip(prompts, responses):
        prompt_ids = tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True)
        if hasattr(prompt_ids, "keys"):
            prompt_ids = prompt_ids["input_ids"]
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(list(prompt_ids) + response_ids)
        starts.append(len(prompt_ids))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    logp = logprobs_from_logits(model(input_ids=ids, attention_mask=mask).logits[:, :-1], ids[:, 1:])
    positions = torch.arange(1, width)[None]
    keep = (positions >= torch.tensor(starts)[:, None]) & (mask[:, 1:] > 0)
    return (logp * keep).sum(-1)


def evaluate_stage(
    sft_path: str | Path,
    ppo_path: str | Path,
    reward_path: str | Path,
    args: EvaluationArguments,
    base_path: str | Path | None = None,
) -> dict[str, Any]:
    """The report's figures: labeler win rate of PPO over SFT on held-out prompts (sampled at
    ``args.temperature``, and greedy), both policies' mean reward-model score and labeler score, the
    KL of PPO to SFT on PPO's samples, and each policy's loss on held-out pretraining text (and the
    pretrained base model's, when ``base_path`` is given)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from ..data import lm_dataset
    from .reward import score_responses

    tokenizer = _load_tokenizer(str(sft_path))
    prompts = prompt_dataset(args.num_prompts, "heldout", seed=args.seed)
    tasks = _tasks(prompts["task"])
    policies = {
        "sft": AutoModelForCausalLM.from_pretrained(sft_path).eval(),
        "ppo": AutoModelForCausalLM.from_pretrained(ppo_path).eval(),
    }
    reward_model = AutoModelForSequenceClassification.from_pretrained(reward_path).eval()
    texts = lm_dataset("validation", num_documents=args.ptx_documents)["text"]
    report: dict[str, Any] = {"eval_prompts": len(tasks), "eval_temperature": args.temperature}
    sampled, greedy = {}, {}
    for name, model in policies.items():
        sampled[name] = generate_responses(model, tokenizer, prompts["prompt"], max_new_tokens=args.max_new_tokens,
                                           temperature=args.temperature, seed=args.seed)  # fmt: skip
        greedy[name] = generate_responses(model, tokenizer, prompts["prompt"], max_new_tokens=args.max_new_tokens,
                                          do_sample=False)  # fmt: skip
        scores = score_responses(reward_model, tokenizer, prompts["prompt"], sampled[name])
        report[f"reward_{name}"] = float(scores.mean())
        report[f"labeler_score_{name}"] = sum(label(t, r) for t, r in zip(tasks, sampled[name])) / len(tasks)
        report[f"labeler_score_{name}_greedy"] = sum(label(t, r) for t, r in zip(tasks, greedy[name])) / len(tasks)
        report[f"ptx_loss_{name}"] = math.log(perplexity(model, tokenizer, texts))
    if base_path is not None:  # the pretrained model before SFT: the paper measures the tax against it
        base = AutoModelForCausalLM.from_pretrained(base_path).eval()
        report["ptx_loss_base"] = math.log(perplexity(base, tokenizer, texts))
    report["win_rate_detail"] = win_rate(tasks, sampled["ppo"], sampled["sft"], compare)
    report["win_rate_ppo_vs_sft"] = report["win_rate_detail"]["win_rate"]
    report["win_rate_ppo_vs_sft_greedy"] = win_rate(tasks, greedy["ppo"], greedy["sft"], compare)["win_rate"]
    kl = _response_logprob_sum(policies["ppo"], tokenizer, prompts["prompt"], sampled["ppo"]) - _response_logprob_sum(
        policies["sft"], tokenizer, prompts["prompt"], sampled["ppo"]
    )
    report["kl"] = float(kl.mean())
    report["ptx_loss_change"] = report["ptx_loss_ppo"] / report["ptx_loss_sft"] - 1
    report["examples"] = [
        {"prompt": p[-1]["content"], "sft": s, "ppo": q}
        for p, s, q in list(zip(prompts["prompt"], sampled["sft"], sampled["ppo"]))[:8]
    ]
    return report
