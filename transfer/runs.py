"""The run folder: everything one training run leaves behind, written so nothing is lost.

A run is written into ``<name>.partial/`` and renamed to ``<name>/`` only when
it has finished, so an interrupted or crashed run never leaves a half-written
folder that looks complete, and ``--overwrite`` replaces an earlier run only
once the new one is done. ``config.json`` holds everything needed to predict
with the model and to reproduce the run.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

from . import __version__
from .config import TrainConfig
from .errors import RunError

log = logging.getLogger("transfer")

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
LABELS_FILE = "labels.txt"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
SPLIT_FILE = "split.csv"
SKIPPED_FILE = "skipped.csv"
PLOT_FILE = "history.png"
CHECKPOINT_FILE = "best.weights.h5"
FORMAT_VERSION = 1


def default_name(backbone: str) -> str:
    return f"{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{backbone}"


def check_name(name: str, option: str = "--name") -> str:
    """A name that becomes a folder must stay one folder: no separators, no '..', printable."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or not name.isprintable():
        raise RunError(f"{option} {name!r} must be a plain folder name (no slashes).")
    return name


class RunFolder:
    """A run being written: files go to a staging folder that :meth:`commit` renames into place."""

    def __init__(self, output_dir: str, name: str, overwrite: bool = False):
        """Check the name now (before any slow work); the staging folder is made by :meth:`start`."""
        check_name(name)
        self.final = os.path.join(output_dir, name)
        self.staging = self.final + ".partial"
        if os.path.exists(self.final) and not overwrite:
            raise RunError(f"run folder {self.final!r} already exists; choose another --name or pass --overwrite.")

    def start(self) -> None:
        if os.path.exists(self.staging):
            log.warning("removing %s, left by an earlier run that did not finish", self.staging)
            shutil.rmtree(self.staging)
        os.makedirs(self.staging)
        log.info("writing the run to %s; it becomes %s when training finishes", self.staging, self.final)

    def path(self, filename: str) -> str:
        return os.path.join(self.staging, filename)

    def commit(self) -> str:
        """Move the finished run into place, replacing an earlier run of the same name last."""
        if os.path.exists(self.path(CHECKPOINT_FILE)):
            os.remove(self.path(CHECKPOINT_FILE))  # model.keras holds the same weights
        old = None
        if os.path.exists(self.final):
            old = f"{self.final}.old-{os.getpid()}"
            os.rename(self.final, old)
        os.rename(self.staging, self.final)
        if old:
            shutil.rmtree(old)
        return self.final


def write_json(path: str, data: Any) -> None:
    """Write JSON atomically: readers see the old file or the new one, never half of one."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_text(path: str, text: str) -> None:
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def run_record(config: TrainConfig, labels: list[str], preprocessing: str, data: dict[str, Any]) -> dict[str, Any]:
    """The content of config.json."""
    import keras
    import tensorflow as tf

    return {
        "format": FORMAT_VERSION,
        "transfer_version": __version__,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "config": config.to_dict(),
        "model": {"labels": labels, "image_size": [config.image_size, config.image_size],
                  "preprocessing": preprocessing, "resize": config.resize, "input": "image",
                  "output": "probabilities", "file": MODEL_FILE},
        "data": data,
        "environment": {"python": platform.python_version(), "tensorflow": tf.__version__,
                        "keras": keras.__version__, "platform": platform.platform()},
    }


@dataclass
class Run:
    """A finished run folder, read back: what predict and export need, with no flags to remember."""

    path: str
    record: dict[str, Any]

    @property
    def labels(self) -> list[str]:
        return list(self.record["model"]["labels"])

    @property
    def config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.record["config"])

    @property
    def name(self) -> str:
        return os.path.basename(os.path.normpath(self.path))

    @property
    def model_path(self) -> str:
        return os.path.join(self.path, self.record["model"].get("file", MODEL_FILE))


def is_run_folder(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG_FILE))


def load_run(path: str) -> Run:
    """Read a run folder, with a clear error when it is not one or did not finish."""
    if not os.path.exists(path):
        raise RunError(f"{path!r} does not exist.")
    if path.rstrip("/").endswith(".partial"):
        raise RunError(f"{path!r} is a run that did not finish; train again to replace it.")
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise RunError(f"{path!r} is not a run folder (no {CONFIG_FILE}).")
    try:
        with open(config_path, encoding="utf-8") as f:
            record = json.load(f)
        record["model"]["labels"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RunError(f"{config_path!r} is unreadable or not a transfer config ({error}).") from None
    run = Run(path, record)
    if not os.path.isfile(run.model_path):
        raise RunError(f"{path!r} has no {os.path.basename(run.model_path)}.")
    return run
