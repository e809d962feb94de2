"""``transfer train --config FILE``: settings from a JSON or TOML file, below the command line.

The order, lowest first: the defaults, ``--preset`` (or the file's ``preset``),
the file, the options typed on the command line. A file holds settings by the
names of :class:`transfer.config.TrainConfig` (``fine_tune_epochs`` or
``fine-tune-epochs``), flat::

    # train.toml                           // train.json
    data_dir = "photos"                    {"data_dir": "photos", "epochs": 5,
    epochs = 5                              "dense": [256]}
    dense = [256]

A run's ``config.json`` is such a file too: its ``config`` is read, less the
run's ``name`` and ``overwrite`` (they name that run, not how it was trained),
so ``--config models/<run>/config.json`` trains the same run again under a new
name. Relative paths are read from the current folder, as on the command line.
Importing this module must not import TensorFlow.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from .config import TrainConfig, check_setting
from .errors import ConfigError
from .presets import apply_preset

#: what a run's config.json records about that run alone: not taken when it is read as --config
RUN_ONLY = ("name", "overwrite")
#: the largest --config file read: settings take a few kB (a run's config.json too)
MAX_BYTES = 2**20


def load(path: str) -> dict[str, Any]:
    """The settings in ``path`` (TOML for ``.toml``, else JSON), each checked; an error names the file and the key."""
    record = _read(path)
    if not isinstance(record, dict):
        raise ConfigError(f"--config {path!r}: expected settings by name (a JSON object or TOML table).")
    if isinstance(record.get("config"), dict) and "format" in record:  # a run's config.json
        record = {k: v for k, v in record["config"].items() if k not in RUN_ONLY}
    settings = {key.replace("-", "_"): value for key, value in record.items()}
    _check_names(path, settings)
    for name, value in settings.items():
        try:
            check_setting(name, value)
        except ConfigError as error:
            raise ConfigError(f"--config {path!r}: {error}") from None
    return {name: tuple(value) if isinstance(value, list) else value for name, value in settings.items()}


def _read(path: str) -> Any:
    """The parsed file; a syntax error says where, and how to fix it. Only a regular file of at most
    :data:`MAX_BYTES` is read: ``/dev/zero`` or a FIFO would never end, or fill the memory."""
    toml = path.lower().endswith(".toml")
    if not os.path.isfile(path):
        raise ConfigError(f"--config {path!r} is not a regular file; give a JSON or TOML file of settings.")
    try:
        with open(path, "rb") as f:
            content = f.read(MAX_BYTES + 1)
        if len(content) > MAX_BYTES:
            raise ConfigError(f"--config {path!r} is over {MAX_BYTES // 2**20} MiB, too large for a file of settings; "
                              "give the JSON or TOML file that holds them.")
        return tomllib.loads(content.decode("utf-8")) if toml else json.loads(content)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        kind = "TOML" if toml else "JSON (name the file .toml for TOML)"
        raise ConfigError(f"--config {path!r} is not valid {kind}: {error}.") from None


def _check_names(path: str, settings: dict[str, Any]) -> None:
    """Every key is a setting of ``transfer train``; unknown ones are named, with the nearest valid name."""
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = [key for key in settings if key not in names]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, names, n=1)
        hints.append(f"{key} (did you mean {close[0]}?)" if close else key)
    raise ConfigError(f"--config {path!r}: unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(hints)}; "
                      "settings are the options of `transfer train --help`, spelled like fine_tune_epochs.")


def merge(preset: str | None, settings: dict[str, Any], explicit: dict[str, Any]) -> TrainConfig:
    """The config: defaults < preset < file ``settings`` < ``explicit`` (typed on the command line).

    ``preset`` is the command line's; without one, the file's ``preset`` applies.
    """
    settings = dict(settings)
    file_preset = settings.pop("preset", None)
    return apply_preset(preset if preset is not None else file_preset, {**settings, **explicit})
