"""A synthetic multi-speaker vowel task like the one of Jacobs, Jordan, Nowlan & Hinton (1991), §4:
discriminate four vowels from their first two formants (F1, F2), spoken by men, women and children.

The paper used Peterson & Barney's (1952) recordings of [i] (heed), [ɪ] (hid), [a] (hod) and [ʌ] (hud).
Here each speaker group's mean formants are Peterson & Barney's published averages; every speaker gets
a vocal-tract scale (formants of one speaker move together, as a shorter tract raises them all), and
every utterance a small independent deviation. The classes overlap across speaker groups (a child's
[ɪ] sits near a man's [i]): the structure that local experts divide between them.

Speakers are numbered either in random group order (``speaker_order="shuffled"``, the default, so that any
speaker split mixes the groups) or as in Peterson & Barney's data (``"peterson_barney"``: men, then women,
then children), where Jacobs et al.'s split "trained with data from the first 50 speakers and tested with
data from the remaining 25" leaves the children and some women for the test set.

Deterministic for a given seed; no download.
"""

from __future__ import annotations

import math
import random

import torch

VOWELS = ("i", "ɪ", "a", "ʌ")  # heed, hid, hod, hud
GROUPS = ("man", "woman", "child")
# Peterson & Barney (1952), Table II: average F1 and F2 (Hz) by speaker group.
PETERSON_BARNEY_MEANS: dict[str, dict[str, tuple[float, float]]] = {
    "man": {"i": (270.0, 2290.0), "ɪ": (390.0, 1990.0), "a": (730.0, 1090.0), "ʌ": (640.0, 1190.0)},
    "woman": {"i": (310.0, 2790.0), "ɪ": (430.0, 2480.0), "a": (850.0, 1220.0), "ʌ": (760.0, 1400.0)},
    "child": {"i": (370.0, 3200.0), "ɪ": (530.0, 2730.0), "a": (1030.0, 1370.0), "ʌ": (850.0, 1590.0)},
}
# Peterson & Barney's speakers: 33 men, 28 women, 15 children (their proportions are kept).
GROUP_SHARES = {"man": 33, "woman": 28, "child": 15}
SPEAKER_ORDERS = ("shuffled", "peterson_barney")


def make_vowel_data(
    num_speakers: int = 75,
    utterances_per_vowel: int = 2,
    speaker_scale_std: float = 0.06,
    utterance_std: float = 0.05,
    seed: int = 0,
    speaker_order: str = "shuffled",
) -> dict[str, torch.Tensor]:
    """F1/F2 of ``num_speakers`` speakers saying each of the four vowels ``utterances_per_vowel`` times.

    Returns ``input_values`` (N, 2): F1 and F2 in kHz (float32); ``labels`` (N,): the vowel index into
    ``VOWELS``; ``formants_hz`` (N, 2); ``speaker`` (N,); ``group`` (N,): index into ``GROUPS``. A
    speaker's formants are the group means times exp(s) with s ~ N(0, speaker_scale_std²) shared by all
    that speaker's vowels; each utterance multiplies each formant by exp(u), u ~ N(0, utterance_std²).
    ``speaker_order``: ``"shuffled"`` (speakers in random group order) or ``"peterson_barney"`` (men, women,
    children, as numbered in Peterson & Barney's data).
    """
    if num_speakers < 1 or utterances_per_vowel < 1:
        raise ValueError("make_vowel_data: num_speakers and utterances_per_vowel must be >= 1.")
    if speaker_order not in SPEAKER_ORDERS:
        raise ValueError(f"make_vowel_data: speaker_order={speaker_order!r}; allowed: {SPEAKER_ORDERS}.")
    rng = random.Random(seed)
    total = sum(GROUP_SHARES.values())
    groups: list[str] = []
    for name, share in GROUP_SHARES.items():  # largest-remainder allocation of the speakers to groups
        groups += [name] * (num_speakers * share // total)
    order = sorted(GROUP_SHARES, key=lambda g: -(num_speakers * GROUP_SHARES[g] % total))
    groups += order[: num_speakers - len(groups)]
    if speaker_order == "shuffled":
        rng.shuffle(groups)  # speakers in random group order, so that any speaker split mixes the groups
    else:
        groups.sort(key=GROUPS.index)  # Peterson & Barney's numbering: men, women, children
    rows, labels, speakers, group_ids = [], [], [], []
    for speaker, group in enumerate(groups):
        scale = rng.gauss(0.0, speaker_scale_std)
        for label, vowel in enumerate(VOWELS):
            f1, f2 = PETERSON_BARNEY_MEANS[group][vowel]
            for _ in range(utterances_per_vowel):
                rows.append([
                    f1 * math.exp(scale + rng.gauss(0.0, utterance_std)),
                    f2 * math.exp(scale + rng.gauss(0.0, utterance_std)),
                ])
                labels.append(label)
                speakers.append(speaker)
                group_ids.append(GROUPS.index(group))
    formants = torch.tensor(rows, dtype=torch.float64)
    return {
        "input_values": (formants / 1000.0).float(),
        "labels": torch.tensor(labels),
        "formants_hz": formants,
        "speaker": torch.tensor(speakers),
        "group": torch.tensor(group_ids),
    }


def split_by_speaker(data: dict[str, torch.Tensor], num_train_speakers: int) -> tuple[dict, dict]:
    """Train on the first ``num_train_speakers`` speakers, test on the others (no speaker in both)."""
    train = data["speaker"] < num_train_speakers
    return ({k: v[train] for k, v in data.items()}, {k: v[~train] for k, v in data.items()})
