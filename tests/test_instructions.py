"""Instruction tasks, the programmatic labeler, the InstructGPT datasets and the chat tokenizer."""

from __future__ import annotations

import json
import math
import random
from collections import Counter

import pytest
import torch

from hf_paper_models import preset
from hf_paper_models.data import instructions as ins
from hf_paper_models.data.instructions import (
    FAMILIES,
    InstructionTask,
    compare,
    demonstrate,
    ideal_response,
    is_correct,
    kwise_dataset,
    label,
    load_instruction_dataset,
    make_tasks,
    messages,
    preference_dataset,
    prompt_dataset,
    rank,
    sft_dataset,
)
from hf_paper_models.tokenizers import chat_tokenizer

ADD = InstructionTask(
    "arithmetic",
    "arithmetic/0",
    "What is 12 plus 56? Reply with the answer only.",
    "68",
    None,
    {"style": "bare"},
)
REVERSE = InstructionTask(
    "string_edit",
    "string_edit/0",
    "Reverse the word 'apple'. Write your reply in capital letters. End your reply with a full stop.",
    "elppa",
    None,
    {"case": "upper", "end": "."},
)


# ---------------------------------------------------------------------------------------------
# The labeler, on hand-worked cases: 1.0 correct + 0.25 per constraint kept + 0.1 * brevity
# ---------------------------------------------------------------------------------------------


def test_label_hand_worked_scores():
    assert label(ADD, "68") == pytest.approx(1.35)  # correct, bare, as short as the ideal "68"
    assert label(ADD, "Sure! The answer is 68.") == pytest.approx(1.0 + 0.1 * 2 / 23)
    assert label(ADD, "12 plus 56 is 68.") == pytest.approx(1.0 + 0.1 * 2 / 17)
    assert label(ADD, "69") == pytest.approx(0.35)  # wrong, but bare and brief
    assert label(ADD, "") == 0.0
    # ideal "ELPPA." (6 characters)
    assert label(REVERSE, "ELPPA.") == pytest.approx(1.6)
    assert label(REVERSE, "ELPPA") == pytest.approx(1.35)  # no full stop
    assert label(REVERSE, "elppa") == pytest.approx(1.1)  # right word, neither constraint
    assert label(REVERSE, "ELPA.") == pytest.approx(0.6)  # both constraints, wrong word
    assert label(REVERSE, "The reversed word is ELPPA.") == pytest.approx(1.25 + 0.1 * 6 / 27)


def test_correct_concise_beats_correct_chatty_beats_incorrect():
    concise, chatty, wrong = "68", "Sure! The answer is 68. Let me know if you need anything else.", "67"
    assert compare(ADD, concise, chatty) == 1 and compare(ADD, chatty, concise) == -1
    assert compare(ADD, chatty, wrong) == 1
    assert compare(ADD, concise, "68") == 0
    assert rank(ADD, [wrong, chatty, concise]) == [2, 1, 0]
    # correct but ignoring the case and the full stop still beats any incorrect reply ...
    assert compare(REVERSE, "elppa", "ELPA.") == 1
    # ... and loses to the reply that follows the instruction
    assert compare(REVERSE, "ELPPA.", "elppa") == 1


def test_answer_extraction():
    sort = InstructionTask("sorting", "sorting/0", "Sort: 12, 3, 9.", "3, 9, 12", None, {"end": "."})
    assert is_correct(sort, "The numbers 12, 3, 9 sorted are 3, 9, 12.")
    assert not is_correct(sort, "3, 12, 9") and not is_correct(sort, "3, 9")
    words = InstructionTask(
        "sorting", "sorting/2", "Order: pig, cat, owl.", "cat, owl, pig", None, {"end": "."}
    )
    assert is_correct(words, "Sure! Here: CAT, OWL, PIG. Hope this helps.")
    assert not is_correct(words, "cat, pig, owl")
    rep = InstructionTask(
        "string_edit", "string_edit/4", "Repeat 'pig' 3 times.", "pig pig pig", None, {"end": "."}
    )
    assert is_correct(rep, "pig pig pig.") and is_correct(rep, "Sure! It is: pig pig pig. Bye.")
    assert not is_correct(rep, "pig pig pig pig") and not is_correct(rep, "pig pig")
    upper = InstructionTask(
        "string_edit", "string_edit/1", "Write 'apple' in upper case.", "APPLE", None, {"end": "."}
    )
    assert is_correct(upper, "APPLE") and not is_correct(upper, "apple")  # case is the content here
    bullets = InstructionTask(
        "formatting", "formatting/1", "List: ant cat.", "- ant\n- cat", None, {"end": "."}
    )
    assert is_correct(bullets, "Here it is:\n- ant\n- cat\nDone.")
    assert not is_correct(bullets, "- ant\n- cat\n- dog") and not is_correct(bullets, "- ant, - cat")
    join = InstructionTask("formatting", "formatting/0", "Join: ant cat.", "ant, cat", None, {"end": "."})
    assert not is_correct(join, "ant, cat, dog") and is_correct(join, "The answer is ant, cat.")
    assert not is_correct(REVERSE, "ELPPA, or maybe ELPA.") and is_correct(
        REVERSE, "Sure! ELPPA. Hope this helps."
    )
    capital = InstructionTask(
        "lookup", "lookup/3", "What is the capital of Velmora?", "Tarsk", None, {"end": "."}
    )
    assert is_correct(capital, "The capital of Velmora is Tarsk.") and not is_correct(
        capital, "Tarsk or Lumen."
    )
    count = InstructionTask("formatting", "formatting/3", 'Words in "a b c"?', "3", None, {"end": "."})
    assert is_correct(count, "There are 3 words.") and not is_correct(count, "3 or 4")


def test_every_canonical_answer_and_demonstration_is_correct():
    rng = random.Random(0)
    for task in make_tasks(1000, "train") + make_tasks(300, "heldout"):
        assert task.family in FAMILIES and 1 <= len(task.constraints) <= 2
        assert is_correct(task, task.answer), task
        best = label(task, ideal_response(task))
        assert best == pytest.approx(1.1 + 0.25 * len(task.constraints)), task
        for style in ins.DEMO_STYLES:  # every style is correct, and only "exact" is the labeler's best
            reply = ins.render_style(task, style, task.answer, rng)
            assert is_correct(task, reply), (style, reply, task)
            if style != "exact":
                assert label(task, reply) < best, (style, reply, task)
        assert is_correct(task, demonstrate(task, rng))


def _style(task: InstructionTask, reply: str) -> str:
    if reply == ideal_response(task):
        return "exact"
    if reply.startswith(ins._OPENERS):
        return "chatty"
    if reply.startswith("You asked:"):
        return "restate"
    assert reply.startswith("The answer:"), reply
    return "loose"


def test_demonstrations_mix_styles_in_the_stated_proportions():
    data = sft_dataset(2000)
    counts = Counter()
    for row in data:
        task = InstructionTask.from_json(row["task"])
        assert row["messages"][:-1] == messages(task)
        reply = row["messages"][-1]
        assert reply["role"] == "assistant" and is_correct(task, reply["content"])
        counts[_style(task, reply["content"])] += 1
    shares = {s: counts[s] / len(data) for s in ins.DEMO_STYLES}
    assert 0.40 <= shares["exact"] <= 0.50  # the labeler's top style: 40-50% of demonstrations
    for style, p in ins.DEMO_STYLES.items():
        assert abs(shares[style] - p) < 0.04, shares


def test_split_by_template_determinism_and_errors():
    train, held = make_tasks(500, "train"), make_tasks(200, "heldout")
    train_ids, held_ids = {t.template_id for t in train}, {t.template_id for t in held}
    assert not train_ids & held_ids
    assert held_ids == ins.HELDOUT_TEMPLATES  # every held-out template is used
    assert len(train_ids) == 25 and all(len(ins.TEMPLATES[f]) >= 5 for f in FAMILIES)
    assert Counter(t.family for t in train) == {f: 100 for f in FAMILIES}
    assert make_tasks(50, seed=3) == make_tasks(50, seed=3)
    assert make_tasks(50, seed=3) != make_tasks(50, seed=4)
    assert sft_dataset(20, seed=1)[:] == sft_dataset(20, seed=1)[:]
    with pytest.raises(ValueError, match="split"):
        make_tasks(5, "validation")
    with pytest.raises(ValueError, match="n must be"):
        make_tasks(0)


def test_task_json_and_messages():
    task = InstructionTask(
        "lookup", "lookup/3", "What is the capital of Velmora?", "Tarsk", "Be brief.", {"end": "."}
    )
    assert InstructionTask.from_json(task.to_json()) == task
    assert json.loads(task.to_json())["constraints"] == {"end": "."}
    assert messages(task) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of Velmora?"},
    ]
    assert task.messages("Tarsk.")[-1] == {"role": "assistant", "content": "Tarsk."}
    assert messages(ADD) == [{"role": "user", "content": ADD.prompt}]


# ---------------------------------------------------------------------------------------------
# Comparison datasets
# ---------------------------------------------------------------------------------------------


def test_kwise_dataset():
    data = kwise_dataset(150, seed=2)
    assert set(data.column_names) == {"prompt", "responses", "scores", "task"}
    ks = Counter()
    for row in data:
        task = InstructionTask.from_json(row["task"])
        k = len(row["responses"])
        ks[k] += 1
        assert 4 <= k <= 9 and len(set(row["responses"])) == k and len(row["scores"]) == k
        assert row["scores"] == [label(task, r) for r in row["responses"]]
        correct = [is_correct(task, r) for r in row["responses"]]
        assert any(correct) and not all(correct)
        assert row["prompt"] == messages(task) and row["prompt"][-1]["role"] == "user"
    assert set(ks) == set(range(4, 10))  # K drawn over the paper's whole range
    assert all(4 <= len(r) <= 5 for r in kwise_dataset(10, k_min=4, k_max=5)["responses"])
    with pytest.raises(ValueError):
        kwise_dataset(3, k_min=5, k_max=4)


def test_preference_dataset_chosen_strictly_better():
    data = preference_dataset(200)
    for row in data:
        task = InstructionTask.from_json(row["task"])
        assert row["prompt"] == messages(task)
        assert [m["role"] for m in row["chosen"]] == ["assistant"] == [m["role"] for m in row["rejected"]]
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        assert compare(task, chosen, rejected) == 1


def test_prompt_dataset():
    data = prompt_dataset(30)
    assert set(data.column_names) == {"prompt", "task"}
    for row in data:
        task = InstructionTask.from_json(row["task"])
        assert task.template_id in ins.HELDOUT_TEMPLATES
        assert [m["role"] for m in row["prompt"]][-1] == "user"
    assert all(
        InstructionTask.from_json(t).template_id not in ins.HELDOUT_TEMPLATES
        for t in prompt_dataset(30, split="train")["task"]
    )


# ---------------------------------------------------------------------------------------------
# Chat tokenizer
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok():
    return chat_tokenizer()


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 plus 3?"},
    {"role": "assistant", "content": "5"},
    {"role": "user", "content": "And 2 plus 4?"},
    {"role": "assistant", "content": "Sure! It is 6."},
]


def test_chat_template_renders_the_expected_string(tok):
    assert tok.eos_token == "<|end|>" and tok.pad_token == "<|pad|>" and tok.bos_token == "<|endoftext|>"
    assert len({tok.eos_token_id, tok.pad_token_id, tok.bos_token_id}) == 3
    assert tok.apply_chat_template(CONVERSATION, tokenize=False) == (
        "<|system|>\nBe brief.<|end|>\n"
        "<|user|>\nWhat is 2 plus 3?<|end|>\n"
        "<|assistant|>\n5<|end|>"
        "<|user|>\nAnd 2 plus 4?<|end|>\n"
        "<|assistant|>\nSure! It is 6.<|end|>"
    )
    prompt = tok.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|system|>\nBe brief.<|end|>\n<|user|>\nWhat is 2 plus 3?<|end|>\n<|assistant|>\n"
    for role in ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"):
        assert len(tok(role, add_special_tokens=False)["input_ids"]) == 1


def test_assistant_mask_covers_the_replies_and_their_end_token(tok):
    out = tok.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    # independent reference: token ids of each piece, concatenated by hand
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    pieces = [
        ("<|system|>\nBe brief.<|end|>\n<|user|>\nWhat is 2 plus 3?<|end|>\n<|assistant|>\n", 0),
        ("5<|end|>", 1),
        ("<|user|>\nAnd 2 plus 4?<|end|>\n<|assistant|>\n", 0),
        ("Sure! It is 6.<|end|>", 1),
    ]
    assert ids == [i for text, _ in pieces for i in enc(text)]
    assert mask == [m for text, m in pieces for _ in enc(text)]


def test_chat_tokenizer_save_and_load(tok, tmp_path):
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    back = AutoTokenizer.from_pretrained(tmp_path)
    assert back.chat_template == tok.chat_template
    assert back.apply_chat_template(CONVERSATION, tokenize=False) == tok.apply_chat_template(
        CONVERSATION, tokenize=False
    )
    assert (back.eos_token, back.pad_token, len(back)) == (tok.eos_token, tok.pad_token, len(tok))
    assert back("<|user|>\nhi<|end|>")["input_ids"] == tok("<|user|>\nhi<|end|>")["input_ids"]


def test_sft_trainer_assistant_only_loss(tok, tmp_path):
    trl = pytest.importorskip("trl")
    from hf_paper_models.models.gpt2 import PaperGPT2LMHeadModel

    config = preset(
        "gpt2-small", vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    data = sft_dataset(24)
    args = trl.SFTConfig(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-3,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0, dataloader_num_workers=0,
        max_length=128, assistant_only_loss=True,
    )  # fmt: skip
    trainer = trl.SFTTrainer(
        model=PaperGPT2LMHeadModel(config), args=args, train_dataset=data, processing_class=tok
    )
    # the trained tokens of each example are exactly its demonstration and <|end|>
    for row, example in zip(data.select(range(4)), trainer.train_dataset.select(range(4))):
        trained = [i for i in example["labels"] if i != -100]  # TRL folds assistant_masks into labels
        assert tok.decode(trained) == row["messages"][-1]["content"] + "<|end|>"
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)


# ---------------------------------------------------------------------------------------------
# Real datasets by schema, from local files
# ---------------------------------------------------------------------------------------------


def test_load_instruction_dataset_local_files(tmp_path):
    sft = tmp_path / "sft.jsonl"
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 3
    sft.write_text("\n".join(json.dumps(r) for r in rows))
    data = load_instruction_dataset(str(sft), "sft")
    assert len(data) == 3 and data[0]["messages"][1]["content"] == "hello"

    pc = tmp_path / "pc.json"
    pc.write_text(json.dumps([{"prompt": "2+2=", "completion": "4"}, {"prompt": "1+1=", "completion": "2"}]))
    assert load_instruction_dataset(str(pc), "sft")["completion"] == ["4", "2"]

    pref = tmp_path / "pref.csv"
    pref.write_text("prompt,chosen,rejected\nWhat is 1+1?,two,three\n")
    assert load_instruction_dataset(str(pref), "preference")[0] == {
        "prompt": "What is 1+1?",
        "chosen": "two",
        "rejected": "three",
    }

    conv = tmp_path / "conv.jsonl"
    conv.write_text("\n".join(json.dumps(r) for r in preference_dataset(4).remove_columns("task")))
    assert load_instruction_dataset(str(conv), "preference")[0]["chosen"][0]["role"] == "assistant"
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"prompt": m} for m in prompt_dataset(3)["prompt"]]))
    assert len(load_instruction_dataset(str(prompts), "prompt")) == 3


def test_load_instruction_dataset_reports_missing_columns(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "chosen": "b"}) + "\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['rejected'\]"):
        load_instruction_dataset(str(bad), "preference")
    with pytest.raises(ValueError, match="missing column"):
        load_instruction_dataset(str(bad), "sft")
    with pytest.raises(ValueError, match="kind"):
        load_instruction_dataset(str(bad), "dpo")
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"messages": [{"text": "no role"}]}) + "\n")
    with pytest.raises(ValueError, match="role"):
        load_instruction_dataset(str(broken), "sft")
