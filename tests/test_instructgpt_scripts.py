"""The InstructGPT recipes in ``training/instructgpt/``: each stage script runs from its YAML (with flag
overrides) on a tiny GPT-2 and leaves a folder that loads on its own; the RL stage also runs through TRL's
RLOO and GRPO with our reward model as the reward; and the three stages run under
``accelerate launch --multi_gpu --num_processes 2`` (gloo on CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from hf_paper_models import preset
from hf_paper_models.models.gpt2 import PaperGPT2ForSequenceClassification, PaperGPT2LMHeadModel
from reproductions.common import load_script

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "training" / "instructgpt"

# A couple of steps of each stage on a few examples; every other setting comes from the stage's YAML.
SFT_TINY = ["--num_examples", "64", "--per_device_train_batch_size", "4", "--max_steps", "2",
            "--save_steps", "2", "--report_to", "none"]  # fmt: skip
RM_TINY = ["--num_prompts", "16", "--num_policy_prompts", "2", "--normalization_samples", "4",
           "--max_new_tokens", "8", "--max_steps", "2", "--save_steps", "2", "--report_to", "none"]  # fmt: skip
PPO_TINY = ["--num_rollouts", "2", "--rollout_batch_size", "4", "--mini_batch_size", "2", "--ppo_epochs", "1",
            "--max_new_tokens", "6", "--num_prompts", "16", "--ptx_documents", "16", "--ptx_batch_size", "2",
            "--ptx_block_size", "16", "--save_steps", "2", "--report_to", "none"]  # fmt: skip
RL_TINY = ["--max_steps", "2", "--per_device_train_batch_size", "4", "--num_generations", "2",
           "--max_completion_length", "6", "--num_prompts", "16", "--logging_steps", "1", "--learning_rate", "1e-3",
           "--report_to", "none"]  # fmt: skip
LAUNCH = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@contextmanager
def _in_process():
    """Run a script's ``main`` here, offline; accelerate keeps its state in process-wide singletons,
    reset afterwards so that the next script starts clean."""
    from accelerate.state import AcceleratorState, GradientState

    with pytest.MonkeyPatch.context() as mp:
        for key, value in OFFLINE.items():
            mp.setenv(key, value)
        try:
            yield
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()


def _run(name: str, *argv: str):
    with _in_process():
        return load_script(SCRIPTS / f"{name}.py").main(["--config", str(SCRIPTS / f"{name}.yaml"), *argv])


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> bool:
    return any(not torch.equal(before[n], p) for n, p in model.state_dict().items() if n in before)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pretrained-model stand-in: GPT-2 with the chat tokenizer (system/user/assistant, eos <|end|>)."""
    from hf_paper_models.tokenizers import chat_tokenizer

    folder = tmp_path_factory.mktemp("base")
    tok = chat_tokenizer()
    tok.model_max_length = 128
    config = preset(
        "gpt2-small", vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    PaperGPT2LMHeadModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def stages(base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """sft.py -> reward.py -> ppo.py, each from its YAML, in this process."""
    out = tmp_path_factory.mktemp("instructgpt")
    sft = _run("sft", "--model_path", str(base), "--output_dir", str(out / "sft"), *SFT_TINY)
    reward = _run("reward", "--sft_path", str(sft), "--output_dir", str(out / "reward"), *RM_TINY)
    ppo = _run(
        "ppo",
        "--sft_path",
        str(sft),
        "--reward_path",
        str(reward),
        "--output_dir",
        str(out / "ppo"),
        *PPO_TINY,
    )
    return {"out": out, "base": base, "sft": sft, "reward": reward, "ppo": ppo}


def _assert_folder(folder: Path, stage: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template is not None and tokenizer.eos_token == "<|end|>"
    assert f"the {stage} stage" in (folder / "README.md").read_text()


def test_yaml_recipes_parse_with_the_papers_settings():
    """Every key of each YAML is a field of the script's dataclasses (the scripts reject unknown keys), the
    command line overrides the YAML, and trl_rl.py takes its trainer (and so its config class) from the YAML."""
    from trl import GRPOConfig, RLOOConfig, TrlParser

    def parse(name: str, *argv: str):
        script = load_script(SCRIPTS / f"{name}.py")
        classes = {"sft": ("SFTStageArguments", "SFTConfig"), "reward": ("RewardStageArguments", "KWiseRewardConfig"),
                   "ppo": ("PPOStageArguments", "PPOConfig")}[name]  # fmt: skip
        parser = TrlParser(tuple(getattr(script, c) for c in classes))
        return parser.parse_args_and_config(["--config", str(SCRIPTS / f"{name}.yaml"), *argv], True)

    stage, config, remaining = parse("sft", "--learning_rate", "0.5")
    assert remaining == [] and config.assistant_only_loss and config.lr_scheduler_type == "cosine"
    assert config.learning_rate == 0.5 and not config.activation_checkpointing and stage.dataset == "embedded"
    stage, config, remaining = parse("reward")
    assert remaining == [] and (stage.k_min, stage.k_max) == (4, 9) and config.num_train_epochs == 1
    stage, config, remaining = parse("ppo", "--ptx_coef", "0")
    assert remaining == [] and config.kl_coef == 0.02 and config.ptx_coef == 0 and config.gamma == 1.0

    rl = load_script(SCRIPTS / "trl_rl.py")
    for name, config_class in (("rloo", RLOOConfig), ("grpo", GRPOConfig)):
        recipe = str(SCRIPTS / f"{name}.yaml")
        assert yaml.safe_load(Path(recipe).read_text())["trainer"] == name
        assert rl._trainer_name(["--config", recipe]) == name
        args, config, remaining = TrlParser((rl.RLArguments, config_class)).parse_args_and_config(
            ["--config", recipe], True
        )
        assert remaining == [] and args.trainer == name and not config.bf16 and config.beta == 0.02
    assert rl._trainer_name(["--config", str(SCRIPTS / "grpo.yaml"), "--trainer", "rloo"]) == "rloo"


def test_sft_reward_ppo_scripts_write_loadable_folders(stages: dict[str, Path]):
    sft = AutoModelForCausalLM.from_pretrained(stages["sft"])
    assert isinstance(sft, PaperGPT2LMHeadModel)
    assert _changed(_weights(AutoModelForCausalLM.from_pretrained(stages["base"])), sft)
    _assert_folder(stages["sft"], "SFT")
    state = json.loads((stages["out"] / "sft" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["train_batch_size"] == 4  # the flags won over the YAML

    reward = AutoModelForSequenceClassification.from_pretrained(stages["reward"])
    assert isinstance(reward, PaperGPT2ForSequenceClassification) and reward.config.num_labels == 1
    _assert_folder(stages["reward"], "reward model")
    assert "bias_shift" in (stages["reward"] / "README.md").read_text()  # normalised on SFT samples

    ppo = AutoModelForCausalLM.from_pretrained(stages["ppo"])
    assert isinstance(ppo, PaperGPT2LMHeadModel) and _changed(_weights(sft), ppo)
    _assert_folder(stages["ppo"], "PPO-ptx")
    history = json.loads((stages["out"] / "ppo" / "log_history.json").read_text())
    assert [h["rollout"] for h in history] == [1, 2]
    assert all(h["ptx_loss"] > 0 for h in history)  # the YAML's ptx_coef (PPO-ptx) is on


def test_plain_ppo_with_a_lora_policy(stages: dict[str, Path]):
    """The README's variants: ``--ptx_coef 0`` (the paper's plain PPO) with ``--use_peft true``."""
    out = stages["out"] / "ppo_lora"
    final = _run("ppo", "--sft_path", str(stages["sft"]), "--reward_path", str(stages["reward"]),
                 "--output_dir", str(out), *PPO_TINY, "--ptx_coef", "0", "--use_peft", "true", "--lora_r", "4")  # fmt: skip
    assert (final / "adapter_config.json").is_file() and not (final / "model.safetensors").exists()
    _assert_folder(final, "PPO-ptx")
    history = json.loads((out / "log_history.json").read_text())
    assert len(history) == 2 and all("ptx_loss" not in h for h in history)


@pytest.mark.parametrize("trainer", ["rloo", "grpo"])
def test_trl_rl_trains_the_sft_policy_on_our_reward_model(
    stages: dict[str, Path], trainer: str, tmp_path: Path
):
    """Two RLOO / GRPO steps from the SFT policy: our reward model scores every completion (the logged
    reward is the mean of its outputs) and the policy's weights move."""
    rl = load_script(SCRIPTS / "trl_rl.py")
    scores: list[torch.Tensor] = []
    built = {}

    def build(args, config):
        built["trainer"] = trainer_ = rl_build(args, config)
        model = trainer_.reward_funcs[0]
        assert isinstance(model, PaperGPT2ForSequenceClassification)
        forward = model.forward

        def counted(*a, **kw):
            output = forward(*a, **kw)
            scores.append(output.logits.detach()[:, 0].clone())
            return output

        model.forward = counted
        built["before"] = _weights(trainer_.model)
        return trainer_

    rl_build = rl.build_trainer
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rl, "build_trainer", build)
        final = tmp_path / "final"
        with _in_process():
            rl.main(["--config", str(SCRIPTS / f"{trainer}.yaml"), "--sft_path", str(stages["sft"]),
                     "--reward_path", str(stages["reward"]), "--output_dir", str(tmp_path), *RL_TINY])  # fmt: skip
    result = built["trainer"]
    assert isinstance(result, rl.GRPOTrainer if trainer == "grpo" else rl.RLOOTrainer)
    assert len(scores) == 2 and all(s.numel() == 4 for s in scores)  # one call a step, 4 completions
    logs = [h for h in result.state.log_history if "reward" in h]
    assert [h["step"] for h in logs] == [1, 2]
    for h, s in zip(logs, scores):
        assert h["reward"] == pytest.approx(float(s.mean()), abs=1e-5)
    assert _changed(built["before"], AutoModelForCausalLM.from_pretrained(final))
    _assert_folder(final, trainer.upper())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sft", "reward", "ppo"])
def test_stage_scripts_under_accelerate_launch_two_processes(
    stages: dict[str, Path], name: str, tmp_path: Path
):
    """Two DDP processes (gloo on CPU; see tests/test_training_recipe.py for why ``--multi_gpu``)."""
    out = tmp_path / name
    argv = {
        "sft": ["--model_path", str(stages["base"]), *SFT_TINY],
        "reward": ["--sft_path", str(stages["sft"]), *RM_TINY],
        "ppo": ["--sft_path", str(stages["sft"]), "--reward_path", str(stages["reward"]), *PPO_TINY],
    }[name]
    env = dict(os.environ, OMP_NUM_THREADS="1", **OFFLINE)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    command = [sys.executable, *LAUNCH, str(SCRIPTS / f"{name}.py"), "--config", str(SCRIPTS / f"{name}.yaml"),
               *argv, "--output_dir", str(out)]  # fmt: skip
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    final = out / "final"
    assert (final / "model.safetensors").is_file() and (final / "config.json").is_file()
    assert (final / "README.md").is_file() and (final / "tokenizer.json").is_file()
    assert not (out / "final.tmp").exists() and not (out / "final.old").exists()
    checkpoint = out / "checkpoint-2"
    if name == "ppo":
        assert (checkpoint / "random_states_1.pkl").is_file()
        assert json.loads((out / "log_history.json").read_text())[0]["episode"] == 2 * 4
    else:  # one RNG state per process: the Trainer ran as a group of two, not as two rank-0 copies
        assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()
