"""``reproductions.common.apply_settings``: the ``--set KEY=VALUE`` overrides every reproduction takes."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from reproductions.common import apply_settings


@dataclass
class Example:
    steps: int = 700
    lr_scale: float = 0.5
    greedy: bool = True
    clock: str = "process"
    max_new_tokens: int | None = None
    grid: tuple[float, ...] = (1.0, 2.0)
    names: tuple[str, ...] = ()


def test_values_take_the_type_of_the_default():
    s = apply_settings(
        Example(), ["steps=9000", "lr_scale=1e-3", "greedy=false", "clock=wall", "max_new_tokens=12"]
    )
    assert s == Example(steps=9000, lr_scale=0.001, greedy=False, clock="wall", max_new_tokens=12)
    assert isinstance(s.steps, int) and isinstance(s.lr_scale, float)
    assert apply_settings(Example(max_new_tokens=5), ["max_new_tokens=none"]).max_new_tokens is None
    assert apply_settings(Example(), ["lr-scale=2"]).lr_scale == 2.0  # dashes read as underscores
    assert apply_settings(Example(), None) == Example()
    assert apply_settings(Example(), ["grid=1,4,64"]).grid == (1.0, 4.0, 64.0)  # a tuple: comma-separated
    assert apply_settings(Example(), ["names=a, b"]).names == ("a", "b")  # an empty tuple reads strings


@pytest.mark.parametrize(
    "item, message",
    [
        ("stepz=3", "KEY one of clock, greedy, grid, lr_scale, max_new_tokens, names, steps"),
        ("steps", "expected KEY=VALUE"),
        ("steps=2.5", "cannot read '2.5' as the type of steps"),
        ("greedy=maybe", "cannot read 'maybe' as the type of greedy"),
        ("grid=1,x", "cannot read '1,x' as the type of grid"),
    ],
)
def test_bad_assignments_name_what_was_wrong(item, message):
    with pytest.raises(ValueError, match="--set") as error:
        apply_settings(Example(), [item])
    assert message in str(error.value)
