"""How every public function reads arguments that hold paths or names: one rule, in one place.

A ``str`` (or ``os.PathLike``, or ``bytes`` for a path) is ONE item, never a
sequence of one-character paths or layer names: ``explain(run, "cat.jpg")``
explains one image, it does not walk ``c``, ``a``, ``t``, ``.``... Other
iterables (lists, tuples, generators) are lists of items. Anything else
(``None`` where a value is needed, a number, a dict) is a :class:`ConfigError`
that names the argument, raised before any work starts. Importing this module
must not import TensorFlow.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import ConfigError

_PATH = (str, bytes, os.PathLike)


def path(value: Any, what: str, *, optional: bool = False) -> str | None:
    """One path as text; ``None`` only when ``optional``."""
    if value is None and optional:
        return None
    if not isinstance(value, _PATH):
        raise ConfigError(f"{what} must be a path (str or os.PathLike){' or None' if optional else ''}; "
                          f"got {_shown(value)}.")
    return os.fsdecode(os.fspath(value))


def name(value: Any, what: str, *, optional: bool = False) -> str | None:
    """One name (a class, a layer, a format) as text; ``None`` only when ``optional``."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a name (str){' or None' if optional else ''}; got {_shown(value)}.")
    return value


def paths(value: Any, what: str) -> list[str]:
    """A list of paths: one path is a list of one; each item is checked as :func:`path`."""
    if isinstance(value, _PATH):
        return [path(value, what)]
    return [path(item, f"each item of {what}") for item in _items(value, what, "a path or a list of paths")]


def names(value: Any, what: str) -> list[str]:
    """A list of names: one name is a list of one; ``None`` is the empty list (the default)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [name(item, f"each item of {what}") for item in _items(value, what, "a name or a list of names")]


def _items(value: Any, what: str, expected: str) -> list:
    """The items of a list-like ``value``; a mapping, a number or ``None`` is an error naming ``what``."""
    if isinstance(value, Mapping) or not isinstance(value, Iterable):
        raise ConfigError(f"{what} must be {expected}; got {_shown(value)}.")
    return list(value)


def _shown(value: Any) -> str:
    """The value as an error message shows it: its type, and its text when that is short."""
    text = repr(value)
    return f"{type(value).__name__} {text}" if len(text) <= 60 else type(value).__name__
