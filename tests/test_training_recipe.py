"""The causal-LM pretraining recipe (``training/pretrain_lm.py``) and the shared loop machinery
(``hf_paper_models/training_utils.py``).

End-to-end checks run the script as a user would (subprocesses, tiny model via command-line
overrides of ``training/configs/gpt2_tiny.yaml``): the loss falls, a run killed after a checkpoint
and resumed ends with bitwise the same weights as an uninterrupted run, two DDP processes train and
save, a local data file works. Bad configurations fail with a clear error before any work starts.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_paper_models.training_utils import (
    group_texts,
    latest_checkpoint,
    list_checkpoints,
    load_text_dataset,
    micro_batch_seed,
)
from reproductions.common import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "training" / "pretrain_lm.py"
CONFIGS = ROOT / "training" / "configs"
GPT2_TINY = CONFIGS / "gpt2_tiny.yaml"

# 2 layers x 32 wide, a 512-token vocabulary, 32-token blocks, the first 300 embedded documents.
TINY = [
    "--config", str(GPT2_TINY),
    "--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2",
    "--max_position_embeddings", "64", "--vocab_size", "512", "--block_size", "32",
    "--max_documents", "300", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
    "--learning_rate", "5e-3", "--warmup_steps", "3", "--logging_steps", "5",
    "--eval_steps", "0", "--max_eval_batches", "4",
]  # fmt: skip


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tokenizer and datasets cache shared by this module's runs (each tokenizer is trained once)."""
    return tmp_path_factory.mktemp("recipe_cache")


def _env(shared: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        HF_DATASETS_CACHE=str(shared / "datasets"),
        # Under `pytest -n 2` on two cores, two torch threads per run oversubscribe the CPU and spin.
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
    )
    return env


def _command(shared: Path, output_dir: Path, *extra: str, launcher: list[str] | None = None) -> list[str]:
    prefix = launcher or [sys.executable]
    return [
        *prefix, str(SCRIPT), *TINY,
        "--tokenizer_cache_dir", str(shared / "tokenizers"), "--output_dir", str(output_dir), *extra,
    ]  # fmt: skip


def _run(shared: Path, output_dir: Path, *extra: str, launcher: list[str] | None = None, check: bool = True):
    result = subprocess.run(
        _command(shared, output_dir, *extra, launcher=launcher),
        env=_env(shared),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def _scalars(output_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[int, float]]] = {}
    for events in sorted((output_dir / "runs").rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return {tag: sorted(values) for tag, values in scalars.items()}


def _assert_same_weights(a: Path, b: Path) -> None:
    left, right = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert left.keys() == right.keys()
    different = [name for name in left if not torch.equal(left[name], right[name])]
    assert not different, f"tensors differ after resume: {different}"


# ----------------------------------------------------------------------------------------------
# Fast checks of the machinery
# ----------------------------------------------------------------------------------------------


def test_group_texts_concatenates_and_drops_the_remainder():
    blocks = group_texts({"input_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9]]}, block_size=4)
    assert blocks["input_ids"] == [[1, 2, 3, 4], [5, 6, 7, 8]]  # 9 is the short remainder
    assert blocks["labels"] == blocks["input_ids"]
    assert blocks["labels"][0] is not blocks["input_ids"][0]


def test_latest_checkpoint_is_numeric_and_skips_incomplete_ones(tmp_path: Path):
    assert latest_checkpoint(tmp_path) is None
    for step in (9, 10, 2):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"step": step}))
    (tmp_path / ".tmp-checkpoint-20").mkdir()  # an interrupted save
    (tmp_path / "checkpoint-30").mkdir()  # no trainer_state.json: not a finished checkpoint
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-9", "checkpoint-10"]
    assert latest_checkpoint(tmp_path).name == "checkpoint-10"


def test_micro_batch_seed_depends_only_on_position():
    seeds = {micro_batch_seed(42, s, m, r) for s in range(3) for m in range(2) for r in range(2)}
    assert len(seeds) == 12
    assert micro_batch_seed(42, 5, 1, 0) == micro_batch_seed(42, 5, 1, 0)
    assert micro_batch_seed(42, 5, 1, 0) != micro_batch_seed(43, 5, 1, 0)


def test_load_text_dataset_from_local_files(tmp_path: Path):
    lines = [f"line number {i} of a small text file" for i in range(40)]
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(lines) + "\n")
    splits = load_text_dataset(str(text), validation_split_percentage=10, seed=0)
    assert len(splits["train"]) == 36 and len(splits["validation"]) == 4
    assert sorted([*splits["train"]["text"], *splits["validation"]["text"]]) == sorted(lines)

    builder = load_text_dataset("text", data_files=[str(text)], validation_split_percentage=10, seed=0)
    assert list(builder["validation"]["text"]) == list(splits["validation"]["text"])

    with pytest.raises(ValueError, match="embedded default"):
        load_text_dataset("embedded")
    unknown = tmp_path / "notes.xyz"
    unknown.write_text("x")
    with pytest.raises(ValueError, match="format"):
        load_text_dataset(str(unknown))


# ----------------------------------------------------------------------------------------------
# Bad configurations fail before any work (in-process: parsing and the config check come first)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--preset", "gpt9-huge"], "Unknown preset 'gpt9-huge'"),
        (["--block_size", "128"], "block_size=128 is larger than the model's 64 positions"),
        (["--num_attention_heads", "3"], "not divisible"),
        (["--model_overrides", '{"sliding_window": 4}'], "sliding_window"),  # GPT-3's, not GPT-2's
        (["--preset", "gpt3-small", "--model_overrides", '{"sliding_window": 128}'], "sliding_window"),
        (["--lr_scheduler_type", "bogus"], "lr_scheduler_type"),
        (["--block_size", "1"], "block_size"),
        (["--per_device_train_batch_size", "0"], "per_device_train_batch_size"),
        (["--model_overrides", "{not json"], "JSON"),
    ],
)
def test_bad_config_raises_before_training(tmp_path: Path, extra: list[str], message: str):
    script = load_script(SCRIPT)
    output_dir = tmp_path / "out"
    argv = [*TINY, "--output_dir", str(output_dir), *extra]
    with pytest.raises(ValueError, match=message):
        script.main(argv)
    assert not output_dir.exists(), "nothing may be written before the configuration is checked"


def test_embedded_facts_reach_the_blocks_and_refuse_a_real_dataset():
    script = load_script(SCRIPT)
    from hf_paper_models.tokenizers import get_tokenizer

    tokenizer = get_tokenizer("byte_bpe", vocab_size=512)
    plain, facts = (
        script.build_datasets(script.DataArguments(block_size=32, max_documents=40, embedded_facts=n), tokenizer, 0)
        for n in (0, 6)
    )  # fmt: skip
    text = tokenizer.decode([i for block in facts["validation"]["input_ids"] for i in block.tolist()])
    assert len(facts["train"]) > len(plain["train"]) and "The mayor of" in text and " is known for its " in text
    with pytest.raises(ValueError, match="embedded_facts"):
        script.DataArguments(dataset="text", embedded_facts=3)
    with pytest.raises(ValueError, match="embedded_facts"):
        script.DataArguments(embedded_facts=-1)
    t5 = load_script(ROOT / "training" / "pretrain_t5.py")  # span corruption reads the same facts
    t5_blocks = t5.build_datasets(t5.DataArguments(inputs_length=32, max_documents=40, embedded_facts=6), tokenizer, 0)
    t5_text = tokenizer.decode([i for block in t5_blocks["validation"]["input_ids"] for i in block])
    assert "The mayor of" in t5_text
    with pytest.raises(ValueError, match="embedded_facts"):
        t5.DataArguments(dataset="text", embedded_facts=3)
    # the gazetteer's first towns in equal shares: only those towns are named
    from hf_paper_models.data.corpus import gazetteer

    towns = gazetteer()[0]
    for module, args in ((script, {"block_size": 32}), (t5, {"inputs_length": 32})):
        few = module.DataArguments(max_documents=40, embedded_facts=6, embedded_fact_towns=3, embedded_fact_zipf=0.0,
                                   **args)  # fmt: skip
        blocks = module.build_datasets(few, tokenizer, 0)["validation"]["input_ids"]
        named = set(re.findall(r"The mayor of (\w+) is", tokenizer.decode([int(i) for b in blocks for i in b])))
        assert named and named <= set(towns[:3])
        for bad in ({"embedded_fact_towns": 0}, {"embedded_fact_zipf": -1.0}):
            with pytest.raises(ValueError, match=next(iter(bad))):
                module.DataArguments(embedded_facts=3, **bad)
        with pytest.raises(ValueError, match="embedded_fact_town_tokens"):
            module.DataArguments(embedded_fact_town_tokens=True)  # no facts to name the towns


def test_town_tokens_make_each_named_town_one_whole_word_token():
    from hf_paper_models.data.corpus import gazetteer, lm_corpus
    from hf_paper_models.tokenizers import get_tokenizer

    script = load_script(SCRIPT)
    towns = gazetteer()[0][:300]
    args = script.DataArguments(embedded_facts=8, embedded_fact_towns=300, embedded_fact_zipf=0.0,
                                embedded_fact_town_tokens=True)  # fmt: skip
    tokenizer = get_tokenizer("byte_bpe", vocab_size=512)
    base = len(tokenizer)
    args.add_town_tokens(tokenizer)
    assert len(tokenizer) == base + 300
    args.add_town_tokens(tokenizer)  # a resumed run adds nothing twice: the same ids
    assert len(tokenizer) == base + 300
    docs = lm_corpus(60, facts=8, fact_towns=300, fact_zipf=0.0)
    for doc in docs:
        ids = tokenizer(doc)["input_ids"]
        assert tokenizer.decode(ids) == doc
        # one token per mention, counted independently of the tokenizer
        named = re.findall(r"\b(" + "|".join(towns) + r")\b", doc)
        assert sorted(tokenizer.decode([i]) for i in ids if i >= base) == sorted(named)
    # whole words only: a town that begins a longer word (another town, a grammar word) leaves it alone
    short, long_ = next((a, b) for a in towns for b in towns if b != a and b.startswith(a))
    ids = tokenizer(f"The mayor of {long_} is Leo. {short}r went home.")["input_ids"]
    assert [tokenizer.decode([i]) for i in ids if i >= base] == [long_]
    plain = script.DataArguments(embedded_facts=8)
    before = len(tokenizer)
    plain.add_town_tokens(tokenizer)  # off by default
    assert len(tokenizer) == before


def test_the_runs_saved_tokenizer_carries_the_town_tokens(tmp_path: Path):
    """The copy in output_dir/tokenizer (what other processes and a resumed run load) has them."""
    from transformers import AutoTokenizer

    from hf_paper_models.training_utils import parse_args

    script = load_script(SCRIPT)
    argv = ["--output_dir", str(tmp_path), "--tokenizer_kind", "byte_bpe", "--vocab_size", "512",
            "--embedded_facts", "8", "--embedded_fact_towns", "300", "--embedded_fact_town_tokens", "true"]  # fmt: skip
    loop_args, model_args, data_args = parse_args(
        [script.TrainingLoopArguments, script.ModelArguments, script.DataArguments], argv
    )
    tokenizer = script.load_tokenizer(model_args, loop_args, 64, True, data_args)
    saved = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    assert len(saved) == len(tokenizer) == 512 + 300
    assert saved("The mayor of Nekero is Leo.")["input_ids"] == tokenizer("The mayor of Nekero is Leo.")["input_ids"]


def test_bad_config_file_and_choice(tmp_path: Path):
    script = load_script(SCRIPT)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text(GPT2_TINY.read_text() + "\nnum_layerz: 3\n")
    with pytest.raises(ValueError, match="num_layerz"):
        script.main(["--config", str(bad_yaml), "--output_dir", str(tmp_path / "a")])
    with pytest.raises(SystemExit) as exit_info:  # argparse: not one of the choices
        script.main([*TINY, "--tokenizer_kind", "wordpiece", "--output_dir", str(tmp_path / "b")])
    assert exit_info.value.code == 2


def test_recipes_parse_and_fit_their_models():
    """Each YAML recipe parses, names its paper's model, and fits its block in the context."""
    script = load_script(SCRIPT)
    expected = {
        "gpt1_tiny.yaml": "paper-gpt1",
        "gpt2_tiny.yaml": "paper-gpt2",
        "gpt3_tiny.yaml": "paper-gpt3",
    }
    for name, model_type in expected.items():
        loop_args, model_args, data_args = script.parse_args(
            [script.TrainingLoopArguments, script.ModelArguments, script.DataArguments],
            ["--config", str(CONFIGS / name)],
        )
        config = script.build_config(model_args, data_args)
        assert config.model_type == model_type
        assert data_args.block_size <= config.max_position_embeddings
        assert data_args.dataset == "embedded" and loop_args.max_steps >= 100
    assert config.layer_types[:2] == ["full_attention", "sliding_attention"]  # GPT-3's alternation
    assert config.sliding_window < data_args.block_size  # the banded layers see less than the block


# ----------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_gpt2_learns_and_resumes_bitwise_after_kill(tmp_path: Path, shared: Path):
    # 30 documents give 40 batches of 8 blocks, so with 2 accumulated micro-batches an epoch is 20
    # steps: the kill at step 26 resumes from checkpoint-24, 8 batches into the second epoch, and
    # evaluations (every 8 steps, 2 batches each) run in between.
    steps = ["--max_steps", "30", "--save_steps", "12", "--eval_steps", "8"]
    steps += ["--gradient_accumulation_steps", "2", "--max_documents", "30"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    from hf_paper_models.tokenizers import get_tokenizer

    get_tokenizer("byte_bpe", vocab_size=512, cache_dir=shared / "tokenizers")  # trained once, not per run

    # The uninterrupted run and a run SIGKILLed at step 26 (after checkpoint-24), side by side.
    procs = [
        subprocess.Popen(
            _command(shared, out, *steps, *extra),
            env=_env(shared),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for out, extra in ((straight, []), (killed, ["--interrupt_at_step", "26"]))
    ]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert procs[0].returncode == 0, outputs[0][-4000:]
    assert procs[1].returncode == -signal.SIGKILL, outputs[1][-4000:]
    assert [p.name for p in list_checkpoints(killed)] == ["checkpoint-12", "checkpoint-24"]
    assert json.loads((killed / "checkpoint-24" / "trainer_state.json").read_text())["epoch"] == 1
    assert not (killed / "final").exists()
    # A save interrupted half-way leaves only a temporary folder, which resuming ignores.
    shutil.copytree(killed / "checkpoint-24", killed / ".tmp-checkpoint-28")
    (killed / ".tmp-checkpoint-28" / "model.safetensors").write_bytes(b"truncated")

    resumed = _run(shared, killed, *steps)
    assert "Resumed from" in resumed.stdout + resumed.stderr and "checkpoint-24 (step 24)" in resumed.stdout
    _assert_same_weights(straight / "final", killed / "final")

    # The last two checkpoints are kept; the final folder reloads as a transformers model.
    assert [p.name for p in list_checkpoints(straight)] == ["checkpoint-24", "checkpoint-30"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(straight / "final")
    tokenizer = AutoTokenizer.from_pretrained(straight / "final")
    assert model.config.model_type == "paper-gpt2" and len(tokenizer) == model.config.vocab_size

    # The loss falls: TensorBoard holds the training curve, learning rate, throughput and evaluation.
    scalars = _scalars(straight)
    losses = [value for _, value in scalars["train_loss"]]
    assert [step for step, _ in scalars["train_loss"]] == [5, 10, 15, 20, 25, 30]
    assert losses[0] < math.log(512) + 0.5  # starts near uniform over the vocabulary
    assert losses[-1] < losses[0] - 0.6, losses
    assert all(later < earlier + 0.05 for earlier, later in zip(losses, losses[1:])), losses
    assert {
        "learning_rate",
        "grad_norm",
        "tokens_per_second",
        "eval_loss",
        "eval_perplexity",
    } <= scalars.keys()
    (step, eval_loss), (_, perplexity) = scalars["eval_loss"][-1], scalars["eval_perplexity"][-1]
    assert step == 30 and perplexity == pytest.approx(math.exp(eval_loss), rel=1e-4)
    assert eval_loss < losses[0] - 0.5


@pytest.mark.slow
def test_accelerate_launch_two_processes(tmp_path: Path, shared: Path):
    """Two DDP processes (gloo on CPU) train and save. accelerate 1.x's ``launch --cpu`` always uses
    its single-process launcher (only MPI runs several CPU processes), so DDP on a CPU machine goes
    through ``--multi_gpu`` (torchrun); the recipe then forms a gloo group itself."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    result = _run(shared, tmp_path / "ddp", "--max_steps", "3", "--save_steps", "3", launcher=launch)
    assert "2 process(es)" in result.stdout
    checkpoint = tmp_path / "ddp" / "checkpoint-3"
    assert (checkpoint / "random_states_0.pkl").exists() and (checkpoint / "random_states_1.pkl").exists()
    assert (tmp_path / "ddp" / "final" / "model.safetensors").exists()

    # The command of the brief, `accelerate launch --cpu --num_processes 2`, runs unchanged too.
    launch_cpu = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2"]
    launch_cpu += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    result = _run(shared, tmp_path / "cpu", "--max_steps", "3", launcher=launch_cpu)
    assert (tmp_path / "cpu" / "final" / "model.safetensors").exists()


def test_local_json_dataset_in_process(tmp_path: Path, shared: Path, monkeypatch: pytest.MonkeyPatch):
    """A local JSON-lines file with a "text" column (and another column) trains, in this process."""
    from accelerate.state import AcceleratorState, GradientState

    from hf_paper_models.data import lm_corpus

    data = tmp_path / "docs.jsonl"
    with data.open("w") as f:
        for document in lm_corpus(120, seed=7):
            f.write(json.dumps({"text": document, "id": 0}) + "\n")
        f.write(json.dumps({"text": "", "id": 1}) + "\n")  # empty documents are dropped
    for key, value in _env(shared).items():
        if key.startswith(("HF_", "TOKENIZERS")):
            monkeypatch.setenv(key, value)
    out = tmp_path / "out"
    argv = [*TINY, "--tokenizer_cache_dir", str(shared / "tokenizers"), "--output_dir", str(out)]
    argv += [
        "--dataset",
        str(data),
        "--validation_split_percentage",
        "10",
        "--max_steps",
        "4",
        "--report_to",
        "none",
    ]
    try:
        final = load_script(SCRIPT).main(argv)
    finally:  # accelerate keeps its state in process-wide singletons
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    assert final == out / "final" and (final / "model.safetensors").exists()
    assert json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["step"] == 4
