"""Optimizer state as data in checkpoints: objects a class keeps in its state become fields.

Some optimizers keep objects of their own package in their state (galore-torch's and
apollo-torch's ``GaLoreProjector``: a rank, a gap, a projection matrix). ``torch.save`` pickles
them, and a weights-only load (every load of this tool: unpickling anything else can run code)
then refuses the whole checkpoint, so ``test``, ``validate`` and a resume of such a run could
not read its own checkpoint. ``as_data`` writes each such object as its class path and its
fields (``vars``), which a weights-only load reads; ``from_data`` gives a resume the objects
back, built as unpickling builds them (``__new__`` and the fields, no constructor), and only of
classes already imported from the packages of the optimizers the run trains with: a checkpoint
never makes this tool import or run anything.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import torch

#: The key that marks an object written as data.
MARK = "__optimizer_state_object__"

_DATA = (torch.Tensor, int, float, bool, str, bytes, type(None), torch.dtype, torch.device)


def packages(classes: Iterable[type]) -> set[str]:
    """The top-level packages of ``classes`` (the optimizers a run trains with)."""
    return {cls.__module__.split(".")[0] for cls in classes}


def as_data(value: Any, owners: set[str]) -> Any:
    """``value`` (an optimizer's ``state_dict``) with every object of a class of the ``owners``
    packages written as ``{MARK: class path, "fields": its fields as data}``; the rest as is."""
    if isinstance(value, _DATA):
        return value
    if isinstance(value, dict):
        return {k: as_data(v, owners) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return _same_kind(value, [as_data(v, owners) for v in value])
    cls = type(value)
    if cls.__module__.split(".")[0] in owners and hasattr(value, "__dict__"):
        path = f"{cls.__module__}.{cls.__qualname__}"
        return {MARK: path, "fields": as_data(vars(value), owners)}
    return value


def from_data(value: Any, owners: set[str]) -> Any:
    """``as_data``'s inverse: each marked entry as an object of its class again. The class must
    belong to one of the ``owners`` packages and be imported already (``ValueError``, one line,
    otherwise)."""
    if isinstance(value, dict):
        if MARK in value and set(value) == {MARK, "fields"}:
            obj = _class(value[MARK], owners).__new__(_class(value[MARK], owners))
            obj.__dict__.update(from_data(value["fields"], owners))
            return obj
        return {k: from_data(v, owners) for k, v in value.items()}
    if isinstance(value, list | tuple) and not isinstance(value, torch.Size):
        return _same_kind(value, [from_data(v, owners) for v in value])
    return value


def _same_kind(value: list | tuple, items: list) -> Any:
    if isinstance(value, list):
        return items
    return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)


def _class(path: str, owners: set[str]) -> type:
    module, _, name = str(path).rpartition(".")
    loaded = sys.modules.get(module)
    found = getattr(loaded, name, None) if module.split(".")[0] in owners else None
    if not isinstance(found, type):
        raise ValueError(
            f"the checkpoint's optimizer state holds a {path} object, which is not a class of "
            f"the optimizers this run trains with ({', '.join(sorted(owners))})"
        )
    return found
