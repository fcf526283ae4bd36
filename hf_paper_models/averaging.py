"""Checkpoint averaging (Vaswani et al. 2017, §6.1): "For the base models, we used a single model
obtained by averaging the last 5 checkpoints, which were written at 10-minute intervals. For the big
models, we averaged the last 20 checkpoints."

``average_checkpoints(paths, out)`` takes checkpoint folders — ``save_pretrained`` folders or the
``checkpoint-N`` folders of the training recipes (``accelerator.save_state``) — or ``.safetensors``
files, and writes the element-wise mean of their weights as ``model.safetensors`` in ``out``. The
folder also receives the last checkpoint's config, generation config and tokenizer files, so a
``save_pretrained`` folder averages into a folder that ``from_pretrained`` loads.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = ["average_checkpoints", "average_state_dicts", "weight_files"]

_WEIGHTS = "model.safetensors"
_INDEX = "model.safetensors.index.json"
# Non-weight files worth carrying over from the newest checkpoint.
COMPANION_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "README.md",
)


def weight_files(path: str | os.PathLike[str]) -> list[Path]:
    """The safetensors file(s) holding a checkpoint's model weights (a file, a folder, a sharded folder)."""
    path = Path(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"{path} is not a .safetensors file; only safetensors checkpoints are averaged.")
        return [path]
    if not path.is_dir():
        raise ValueError(f"{path} is neither a checkpoint folder nor a .safetensors file.")
    if (path / _INDEX).is_file():
        index = json.loads((path / _INDEX).read_text())
        return [path / name for name in sorted(set(index["weight_map"].values()))]
    if (path / _WEIGHTS).is_file():
        return [path / _WEIGHTS]
    raise ValueError(f"{path} holds no {_WEIGHTS} (or sharded index); nothing to average.")


def _load(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for file in weight_files(path):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118  (safe_open is not a mapping)
                state[key] = handle.get_tensor(key)
    return state


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating-point tensors (accumulated in float64, returned in each tensor's
    dtype); integer tensors (counters, ids) must agree and are kept as they are."""
    if not states:
        raise ValueError("average_state_dicts needs at least one state dict.")
    keys = set(states[0])
    for i, state in enumerate(states[1:], start=1):
        if set(state) != keys:
            diff = sorted(keys.symmetric_difference(state))[:5]
            raise ValueError(f"Checkpoint {i} holds other tensors than checkpoint 0 (e.g. {diff}).")
    averaged = {}
    for key in sorted(keys):
        first = states[0][key]
        for i, state in enumerate(states[1:], start=1):
            if state[key].shape != first.shape:
                raise ValueError(
                    f"`{key}` has shape {tuple(state[key].shape)} in checkpoint {i} but {tuple(first.shape)} "
                    "in checkpoint 0: these are not checkpoints of one model."
                )
        if first.is_floating_point():
            total = torch.zeros(first.shape, dtype=torch.float64)
            for state in states:
                total += state[key].to(torch.float64)
            averaged[key] = (total / len(states)).to(first.dtype)
        else:
            if any(not torch.equal(state[key], first) for state in states[1:]):
                raise ValueError(
                    f"Integer tensor `{key}` differs between checkpoints; it cannot be averaged."
                )
            averaged[key] = first.clone()
    return averaged


def average_checkpoints(paths: Sequence[str | os.PathLike[str]], output_dir: str | os.PathLike[str]) -> Path:
    """Average the weights of ``paths`` (oldest to newest) into ``output_dir/model.safetensors``.

    Returns ``output_dir``. Raises ``ValueError`` when a path holds no safetensors weights or the
    checkpoints disagree in their tensors.
    """
    if len(paths) == 0:
        raise ValueError("average_checkpoints needs at least one checkpoint.")
    states = [_load(path) for path in paths]
    averaged = average_state_dicts(states)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    newest = Path(paths[-1])
    metadata = {"format": "pt", "averaged_from": json.dumps([str(p) for p in paths])}
    save_file(averaged, str(out / _WEIGHTS), metadata=metadata)
    if newest.is_dir():
        for name in COMPANION_FILES:
            if (newest / name).is_file() and newest.resolve() != out.resolve():
                shutil.copy2(newest / name, out / name)
    return out
