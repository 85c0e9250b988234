"""Classes by import path and what their constructors take: the bottom of the package.

Optimizers, nets, clipping rules and schedulers are all named by class path and configured by
their constructors' arguments; these two helpers are the one place that reads either.
"""

from __future__ import annotations

import importlib
import inspect


def import_class(class_path: str) -> type:
    """The class at ``class_path`` (``package.module.Class``); one clear error if missing."""
    module, _, name = class_path.rpartition(".")
    if not module:
        raise ValueError(f"{class_path!r} is not an import path (package.module.Class)")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import {class_path!r}: {err}") from None
    if not isinstance(cls, type):
        raise ValueError(f"{class_path!r} is not a class")
    return cls


def constructor_arguments(cls: type) -> dict[str, inspect.Parameter]:
    """The keyword arguments of ``cls.__init__`` but ``self`` and ``params`` (the source of
    truth for what an optimizer or callback takes)."""
    params = inspect.signature(cls.__init__).parameters
    return {
        n: p
        for n, p in params.items()
        if n not in ("self", "params") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
