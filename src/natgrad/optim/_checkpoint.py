"""Checks that a state dict handed to `NGD.load_state_dict` belongs to this optimizer and its parameters.

torch's own check compares only the number of groups and of parameters per group; a state dict of another
model with the same counts, or of another optimizer, would load and crash (or silently mislead) a later
step. Everything here runs before anything is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

CALL = "NGD.load_state_dict"
STATE_KEYS = {"momentum_buffer"}


def _fail(expected: str, got: str) -> None:
    raise ValueError(f"{CALL}: expected {expected}, got {got}; nothing was loaded")


def check_state_dict(state_dict: Any, shapes: Sequence[Sequence[torch.Size]]) -> None:
    """Raise ``ValueError`` unless ``state_dict`` is an NGD state for parameters of these shapes.

    Args:
        state_dict: what was passed to ``load_state_dict``.
        shapes: the shapes of the optimizer's parameters, group by group.
    """
    if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
        _fail(
            "a dict from NGD.state_dict() with 'state', 'param_groups' and 'ngd'",
            f"{type(state_dict).__name__}",
        )
    groups = state_dict["param_groups"]
    if "ngd" not in state_dict:
        keys = sorted({k for g in groups for k in g} - {"params", "param_names"})
        _fail(
            "a state dict saved by NGD.state_dict() (it has an 'ngd' entry: damping, step count, generator)",
            f"one without it, with parameter-group settings {keys} — the state of another optimizer "
            "(e.g. torch.optim.SGD) cannot continue an NGD run; start NGD from fresh state instead",
        )
    expected_sizes = [len(group) for group in shapes]
    got_sizes = [len(g["params"]) for g in groups]
    if got_sizes != expected_sizes:
        _fail(
            f"{len(expected_sizes)} parameter group(s) with {expected_sizes} parameters",
            f"{len(got_sizes)} group(s) with {got_sizes} — the state of another model or optimizer setup",
        )
    flat_shapes = [tuple(s) for group in shapes for s in group]
    extra = state_dict["ngd"]
    saved_shapes = extra.get("shapes") if isinstance(extra, Mapping) else None
    if saved_shapes is not None:
        saved = [tuple(s) for s in saved_shapes]
        if saved != flat_shapes:
            k = next((i for i, (a, b) in enumerate(zip(saved, flat_shapes, strict=False)) if a != b), None)
            where = (
                f" (first difference at parameter {k}: {flat_shapes[k]} vs {saved[k]})"
                if k is not None
                else ""
            )
            _fail(
                f"parameters of shapes {flat_shapes}",
                f"a state saved for shapes {saved}{where} — the state of another model",
            )
    ids = [pid for g in groups for pid in g["params"]]
    for index, pid in enumerate(ids):
        entry = state_dict["state"].get(pid)
        if entry is None:
            continue
        unknown = sorted(set(entry) - STATE_KEYS)
        if unknown:
            _fail(
                f"per-parameter state with keys {sorted(STATE_KEYS)}", f"keys {unknown} for parameter {index}"
            )
        buffer = entry.get("momentum_buffer")
        if buffer is not None and tuple(buffer.shape) != flat_shapes[index]:
            _fail(
                f"a momentum buffer of shape {flat_shapes[index]} for parameter {index}",
                f"shape {tuple(buffer.shape)} — the state of another model",
            )
    damping, steps = extra.get("damping"), extra.get("steps_taken")
    if not (isinstance(damping, int | float) and math.isfinite(damping) and damping >= 0):
        _fail("a finite damping >= 0 in the 'ngd' entry", repr(damping))
    if not (isinstance(steps, int) and steps >= 0):
        _fail("a step count (int >= 0) in the 'ngd' entry", repr(steps))
