"""Counting calls of the expensive steps of a command, wherever a module bound them.

``count_calls`` wraps each named function (and replaces every binding of it in
``lightning_opt``'s modules, so ``from x import f`` is counted too) for the duration of a
``with`` block."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any


def _wrap(counter: Counter, key: str, fn: Any) -> Any:
    @functools.wraps(fn)
    def counted(*args: Any, **kwargs: Any) -> Any:
        counter[key] += 1
        return fn(*args, **kwargs)

    return counted


@contextlib.contextmanager
def count_calls(targets: dict[str, tuple[Any, str]]) -> Iterator[Counter]:
    """``targets``: ``{key: (owner, attribute)}``, owner a module or a class. Functions of a
    module are replaced in every ``lightning_opt`` module that bound them; methods on the class."""
    counter: Counter = Counter()
    undo: list[tuple[Any, str, Any]] = []
    for key, (owner, name) in targets.items():
        original = owner.__dict__[name]
        if isinstance(original, classmethod):
            wrapped: Any = classmethod(_wrap(counter, key, original.__func__))
        else:
            wrapped = _wrap(counter, key, original)
        holders = [owner]
        if not isinstance(owner, type):
            holders += [
                module
                for module_name, module in list(sys.modules.items())
                if module_name.startswith("lightning_opt") and module is not owner
                and getattr(module, name, None) is original
            ]  # fmt: skip
        for holder in holders:
            undo.append((holder, name, holder.__dict__[name]))
            setattr(holder, name, wrapped)
    try:
        yield counter
    finally:
        for holder, name, value in reversed(undo):
            setattr(holder, name, value)
