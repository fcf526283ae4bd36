"""Steerability by the system message (GPT-4 report §6): cases, scoring by the labeler's constraint
checks with hand-written replies, and the whole evaluation over rule-based responders (no model)."""

from __future__ import annotations

import pytest

from hf_paper_models.data.instructions import InstructionTask, make_tasks
from hf_paper_models.evaluation.steerability import (
    DEMONSTRATION_STYLES,
    STYLES,
    evaluate_steerability,
    steerability,
    steering_cases,
)

ADD = InstructionTask("arithmetic", "arithmetic/0", "What is 2 plus 3? End your reply with a full stop.", "5",
                      None, {"end": "."})  # fmt: skip
CAPITAL = InstructionTask(
    "lookup", "lookup/3", "What is the capital of Zorvia?", "Quillton", None, {"max_words": 3}
)
UPPER_EDIT = InstructionTask("string_edit", "string_edit/1", "Write the word 'apple' in upper case.", "APPLE")


def test_cases_drop_the_tasks_own_constraints_and_skip_uncheckable_case_styles():
    cases = steering_cases([ADD, CAPITAL, UPPER_EDIT], STYLES)
    by_task = {}
    for c in cases:
        by_task.setdefault(c.steered.answer, []).append(c.style.name)
        assert c.steered.system == c.style.system and c.baseline.system is None
        assert c.steered.prompt == c.baseline.prompt and "full stop" not in c.steered.prompt
        assert c.steered.constraints == c.baseline.constraints == c.style.constraints
        assert c.steered.messages()[0] == {"role": "system", "content": c.style.system}
    # "5" has no letters and "APPLE" is itself a case edit: no case styles for them.
    assert by_task["5"] == by_task["APPLE"] == ["exclamation_mark", "answer_only", "answer_prefix"]
    assert by_task["Quillton"] == [s.name for s in STYLES]
    with pytest.raises(ValueError):
        steering_cases([ADD], [s for s in STYLES if s.about_case])


def test_scoring_by_hand():
    cases = steering_cases([CAPITAL], STYLES)  # one case per style, in STYLES order
    steered = ["QUILLTON", "It is Quillton!", "Quillton", "Answer: Quillton", "quillton is the capital."]
    baseline = ["The capital is Quillton."] * 5
    report = steerability(cases, steered, baseline)
    styles = report["styles"]
    assert [styles[s.name]["followed_with_system"] for s in STYLES] == [1.0, 1.0, 1.0, 1.0, 1.0]
    # The baseline reply keeps none of the styles: mixed case, ends in ".", a sentence, no prefix.
    assert report["followed_without_system"] == 0.0 and report["followed_with_system"] == 1.0
    assert report["correct_with_system"] == report["correct_without_system"] == 1.0
    wrong = steerability(
        cases, ["NORTHPORT", "Quillton.", "The answer is Quillton", "Quillton", "QUILLTON"], baseline
    )
    # A wrong answer in capitals still has the style (the style is judged apart from the content).
    assert wrong["followed_with_system"] == pytest.approx(1 / 5)
    assert wrong["styles"]["capital_letters"]["followed_with_system"] == 1.0
    assert wrong["styles"]["capital_letters"]["correct_with_system"] == 0.0
    assert wrong["correct_with_system"] == pytest.approx(4 / 5)  # all but NORTHPORT
    with pytest.raises(ValueError):
        steerability(cases, steered[:2], baseline)


def obedient(prompts):
    """Follows the style its system message names (STYLES' phrasings); without one, a plain sentence."""
    replies = []
    for messages in prompts:
        system = messages[0]["content"] if messages[0]["role"] == "system" else ""
        answer = next(t for t in make_tasks(40, "heldout") if t.question == messages[-1]["content"]).answer
        reply = {
            "Answer in capital letters.": answer.upper(),
            "End every reply with an exclamation mark.": f"{answer}!",
            "Reply with the answer only.": answer,
            'Start every reply with "Answer:".': f"Answer: {answer}",
            "Use only lowercase letters.": answer.lower(),
        }.get(system, f"The answer is {answer}.")
        replies.append(reply)
    return replies


def test_evaluation_separates_a_steerable_responder_from_a_deaf_one():
    tasks = make_tasks(40, "heldout")
    prompts_seen = []

    def deaf(prompts):
        prompts_seen.extend(prompts)
        return obedient([[m for m in p if m["role"] != "system"] for p in prompts])

    steered = evaluate_steerability(obedient, tasks, STYLES)
    ignored = evaluate_steerability(deaf, tasks, STYLES)
    assert steered["followed_with_system"] == 1.0 and steered["correct_with_system"] == 1.0
    assert (
        ignored["followed_with_system"]
        == ignored["followed_without_system"]
        == steered["followed_without_system"]
    )
    assert steered["followed_without_system"] < 0.2
    assert set(steered["styles"]) == {s.name for s in STYLES} and len(steered["samples"]) == 5
    # One baseline prompt per question, not per style.
    alone = [p for p in prompts_seen if p[0]["role"] == "user"]
    assert len(alone) == len({t.question for t in tasks})


def test_demonstration_styles_are_the_phrases_of_the_embedded_demonstrations():
    systems = " ".join(t.system for t in make_tasks(400, "train") if t.system)
    for style in DEMONSTRATION_STYLES:
        assert style.system in systems, style.system
    assert [s.name for s in DEMONSTRATION_STYLES] == [s.name for s in STYLES]
    assert [s.constraints for s in DEMONSTRATION_STYLES] == [s.constraints for s in STYLES]


def test_command_line_on_a_saved_chat_model(tmp_path, capsys, greedy_chat_reply):
    import json

    import torch
    from transformers import AutoModelForCausalLM

    from hf_paper_models import preset
    from hf_paper_models.evaluation.steerability import main
    from hf_paper_models.tokenizers import chat_tokenizer

    tokenizer = chat_tokenizer()
    config = preset("gpt2-small", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    max_position_embeddings=128, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    report = main(
        [
            str(tmp_path / "model"),
            "--tasks",
            "5",
            "--max_new_tokens",
            "4",
            "--output",
            str(tmp_path / "r.json"),
        ]
    )
    assert (
        json.loads((tmp_path / "r.json").read_text())["new_phrasings"]["n"]
        == report["new_phrasings"]["n"]
        > 0
    )
    assert "answer_prefix" in capsys.readouterr().out
    # the same evaluation with an independent responder: a plain greedy loop over full forwards, one
    # prompt at a time (no batching, padding or cache), through the saved tokenizer's chat template
    from transformers import AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    saved = AutoTokenizer.from_pretrained(tmp_path / "model")

    def greedy(prompts):
        return [greedy_chat_reply(model, saved, messages, 4) for messages in prompts]

    tasks = make_tasks(5, "heldout", seed=0)
    for name, styles in (("new_phrasings", STYLES), ("demonstration_phrasings", DEMONSTRATION_STYLES)):
        want = evaluate_steerability(greedy, tasks, styles)
        assert report[name]["samples"] == want["samples"]  # the same prompts, the same replies
        assert any(sample["with_system"] for sample in want["samples"])
        for key in ("n", "followed_with_system", "followed_without_system", "correct_with_system",
                    "correct_without_system"):  # fmt: skip
            assert report[name][key] == want[key], (name, key)
