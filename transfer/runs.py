"""The run folder: everything one training run leaves behind, written so nothing is lost.

A run is written into ``<name>.partial/`` and renamed to ``<name>/`` only when
it has finished, so an interrupted or crashed run never leaves a half-written
folder that looks complete, and ``--overwrite`` replaces an earlier run only
once the new one is done. ``config.json`` holds everything needed to predict
with the model and to reproduce the run.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import logging
import math
import os
import platform
import shutil
import tempfile
import unicodedata
import uuid
from dataclasses import dataclass
from typing import Any

from . import __version__, inputs
from .config import TrainConfig
from .errors import RunError

log = logging.getLogger("transfer")

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
LABELS_FILE = "labels.txt"
HISTORY_FILE = "history.csv"
PHASES = ("head", "fine_tune", "deeper")  # history.csv's phase column, in the order a run trains them
METRICS_FILE = "metrics.json"
SPLIT_FILE = "split.csv"
SKIPPED_FILE = "skipped.csv"
PLOT_FILE = "history.png"
CHECKPOINT_FILE = "best.weights.h5"
ENVIRONMENT_FILE = "environment.json"  # versions, platform and devices the run ran on
BACKBONE_CHOICE_FILE = "backbone-choice.json"  # --backbone auto: every candidate measured, and the one chosen
FINE_TUNE_PROBE_FILE = "fine-tune-probe.json"  # --fine-tune auto: the head, the probe, and what was decided
HEAD_WEIGHTS_FILE = "head-only.weights.h5"  # --fine-tune auto: the head's weights while the probe runs
DEEPER_PROBE_FILE = "deeper-probe.json"  # --fine-tune auto: fine-tuning, fine-tuning deeper, and what was decided
FINE_TUNED_WEIGHTS_FILE = "fine-tuned.weights.h5"  # --fine-tune auto: phase 2's weights while the deeper probe runs
EXPORT_INFO_FILE = "transfer.json"  # an export's labels, input size and resizing, in its assets.extra/
TFLITE_FILE = "model.tflite"  # `export --format tflite`: NAME/tflite-<quantize>/ holds it, labels.txt, metadata.json
TFLITE_INFO_FILE = "metadata.json"
TFLITE_PREFIX = "tflite-"
ONNX_FILE = "model.onnx"  # `export --format onnx`: NAME/onnx/ holds it, labels.txt and metadata.json
ONNX_FOLDER = "onnx"
EXPORTS_FOLDER = "export"  # where `transfer export RUN` writes by default: RUN/export/<name>/<version>/
REPORT_FILE = "report.html"  # in a run folder and in each evaluation folder
CONFUSION_FILE = "confusion_matrix.png"
EVALUATIONS_FOLDER = "evaluations"  # where `transfer evaluate RUN DATA` writes by default: RUN/evaluations/<data>/
EVALUATION_FILE = "evaluation.json"
MISCLASSIFIED_FILE = "misclassified.csv"
TOP_LOSSES_FILE = "top_losses.png"
EVALUATION_MARKER = ".transfer-evaluation.json"
MARKER_FILE = ".transfer-run.json"  # written into a staging folder when it is made, and last into a finished run
#: what a run folder written before the marker file holds; --overwrite replaces such a run only if it holds no more
RUN_FILES = frozenset({MODEL_FILE, CONFIG_FILE, LABELS_FILE, HISTORY_FILE, METRICS_FILE, SPLIT_FILE, SKIPPED_FILE,
                       PLOT_FILE})
STAGING_SUFFIX = ".partial"
#: in a staging folder: backup/epoch-N/ holds the state after N epochs, for --resume (training/resume.py)
BACKUP_FOLDER = "backup"
#: in a staging folder: every dataset file's size and mtime when the run started, so --resume notices changed data
FINGERPRINT_FILE = "data-fingerprint.json"
STATE_FILE = "state.json"  # written last into a backup: one without it was cut short and is ignored
WEIGHTS_FILE = "model.npz"
OPTIMIZER_FILE = "optimizer.npz"
FORMAT_VERSION = 1


def default_name(backbone: str) -> str:
    return f"{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{backbone}"


def check_name(name: str, option: str = "--name") -> str:
    """A name that becomes a folder must stay one folder, and never collide with the staging scheme."""
    problem = _name_problem(name)
    if problem:
        raise RunError(f"{option} {name!r} must be a plain folder name: {problem}.")
    return name


def _name_problem(name) -> str | None:
    if not isinstance(name, str) or not name:
        return "give a non-empty name"
    if "/" in name or "\\" in name:
        return "no slashes"
    if name.startswith("."):
        return "it must not start with '.' (hidden, and used for transfer's temporary folders)"
    if name.endswith(STAGING_SUFFIX):
        return f"names ending in {STAGING_SUFFIX!r} are kept for runs that have not finished"
    if not name.isprintable():
        return "no control or unprintable characters"
    if len(os.fsencode(name + STAGING_SUFFIX)) > 255:
        return "it is too long for a folder name"
    return None


def label_problem(label: str) -> str | None:
    """Why ``label`` cannot be a class name ("is blank..."): labels are lines of labels.txt, and values elsewhere."""
    categories = {unicodedata.category(c) for c in label}
    if "Cs" in categories:
        return "is not valid UTF-8"
    if categories & {"Cc", "Zl", "Zp"}:
        return "holds a control character or a line break (a newline, a tab...)"
    if not label.strip() or label.strip() != label:
        return "is blank or begins or ends with a space"
    return None


def check_writable(folder: str, option: str) -> None:
    """Refuse, before any slow work, an output folder that is a file or cannot be written.

    The folder may not exist yet: its nearest existing ancestor is checked.
    """
    existing = os.path.abspath(folder)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise RunError(f"{option} {folder!r} cannot be used: {existing!r} is a file, not a folder; "
                       f"choose another {option}.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunError(f"{option} {folder!r} cannot be used: {existing!r} cannot be written (permission denied or "
                       f"a read-only file system); choose another {option}.")


def make_dirs(path: str, option: str) -> None:
    """``os.makedirs``, failing with a message that names the folder and the option to change."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise RunError(f"cannot create the folder {path!r} ({error.strerror or error}); "
                       f"choose another {option}.") from None


def within(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or inside it (both absolute and normalised)."""
    return os.path.commonpath([path, folder]) == folder


def check_apart(run_paths: list[str], data_dir: str) -> None:
    """A run folder is never the dataset nor around it (that it is not inside it, :mod:`transfer.outputs` checks)."""
    data = os.path.realpath(data_dir)
    for path in run_paths:
        real = os.path.realpath(path)
        if within(data, real):
            relation = "be" if real == data else "contain"
            raise RunError(f"the run folder {path!r} would {relation} the dataset folder {data_dir!r}; "
                           "choose another --name or --output-dir.")


def _read_marker(folder: str) -> dict[str, Any] | None:
    """The marker file transfer writes into each run folder it makes, or None when there is none."""
    try:
        with open(os.path.join(folder, MARKER_FILE), encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("tool") == "transfer" else None


def _write_marker(folder: str, name: str, finished: bool) -> None:
    """A staging folder's marker, then (written last, with the list of the run's files) a finished run's."""
    files = sorted({*os.listdir(folder), MARKER_FILE}) if finished else []
    write_json(os.path.join(folder, MARKER_FILE),
               {"tool": "transfer", "format": FORMAT_VERSION, "name": name, "finished": finished, "files": files})


def _legacy_run(folder: str) -> bool:
    """A finished run written before run folders had a marker: config.json of this format beside model.keras."""
    try:
        with open(os.path.join(folder, CONFIG_FILE), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return False
    return (isinstance(record, dict) and record.get("format") == FORMAT_VERSION and "model" in record
            and os.path.isfile(os.path.join(folder, MODEL_FILE)))


def holds_run(folder: str) -> bool:
    """Whether ``folder`` is a run folder of transfer, finished or not."""
    return _read_marker(folder) is not None or _legacy_run(folder)


def replace_problem(path: str) -> str | None:
    """Why ``--overwrite`` may not replace ``path``; None when it is a finished run holding only what it wrote."""
    if os.path.islink(path):
        return "it is a symbolic link"
    if not os.path.isdir(path):
        return "it is a file, not a run folder"
    marker = _read_marker(path)
    if marker is not None and not marker.get("finished"):
        return "it is a run that did not finish"
    if marker is None and not _legacy_run(path):
        return f"it is not a run folder of transfer (no {MARKER_FILE})"
    expected = set(marker.get("files", [])) if marker is not None else RUN_FILES
    extra = sorted(set(os.listdir(path)) - expected)
    made = {EXPORTS_FOLDER: _only_exports, EVALUATIONS_FOLDER: _only_evaluations}  # by export and evaluate
    extra = [e for e in extra if not (e in made and made[e](os.path.join(path, e)))]  # of this run: they go with it
    if extra:
        return f"it holds files that the run did not write ({', '.join(extra[:5])}); move them out first"
    return None


def exports_problem(base: str) -> str | None:
    """Why ``base`` is not a folder of transfer's exports of one model (version folders, tflite-* and labels.txt) that
    export may write into; None when it is one, or does not exist."""
    if not os.path.lexists(base):
        return None
    if os.path.islink(base) or not os.path.isdir(base):
        return "it is not a folder of exports"
    visible = sorted(e for e in os.listdir(base) if not e.startswith("."))  # .N.partial-*: an export that crashed
    exports = [e for e in visible if _is_export(os.path.join(base, e))]
    other = [e for e in visible if not (e.isdigit() or e == LABELS_FILE or e in exports)]
    if other or (visible and not exports):
        return f"it holds files that are not exports of transfer ({', '.join((other or visible)[:5])})"
    return None


def _is_export(path: str) -> bool:
    """A SavedModel version folder, a ``tflite-<quantize>`` or an ``onnx`` folder that export wrote."""
    name = os.path.basename(path)
    if name.isdigit():
        return os.path.isfile(os.path.join(path, "assets.extra", EXPORT_INFO_FILE))
    return ((name.startswith(TFLITE_PREFIX) or name == ONNX_FOLDER) and not os.path.islink(path)
            and os.path.isfile(os.path.join(path, TFLITE_INFO_FILE)))


def _only_exports(folder: str) -> bool:
    """Whether ``folder`` (a run's export/) holds nothing but transfer's exports, one folder per export name."""
    if os.path.islink(folder) or not os.path.isdir(folder):
        return False
    names = os.listdir(folder)
    return all(os.path.isdir(os.path.join(folder, n)) and exports_problem(os.path.join(folder, n)) is None
               for n in names)


def latest_backup(staging: str) -> str | None:
    """The newest complete backup of the unfinished run in ``staging``; None when it has none (not resumable)."""
    parent = os.path.join(staging, BACKUP_FOLDER)
    try:
        names = sorted(os.listdir(parent), reverse=True)
    except OSError:
        return None
    return next((os.path.join(parent, n) for n in names if os.path.isfile(os.path.join(parent, n, STATE_FILE))), None)
def _only_evaluations(folder: str) -> bool:
    """Whether ``folder`` (a run's evaluations/) holds nothing but folders that `transfer evaluate` wrote."""
    if os.path.islink(folder) or not os.path.isdir(folder):
        return False
    return all(evaluation_problem(os.path.join(folder, n)) is None for n in os.listdir(folder))


def evaluation_problem(path: str) -> str | None:
    """Why ``transfer evaluate`` may not replace ``path``; None when it is an evaluation folder it wrote (finished or
    not) holding only its own files, or does not exist."""
    if not os.path.lexists(path):
        return None
    if os.path.islink(path) or not os.path.isdir(path):
        return "it is not a folder"
    try:
        with open(os.path.join(path, EVALUATION_MARKER), encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        marker = None
    if not (isinstance(marker, dict) and marker.get("tool") == "transfer"):
        return f"it is not an evaluation folder of transfer (no {EVALUATION_MARKER})"
    extra = sorted(set(os.listdir(path)) - set(marker.get("files") or []) - {EVALUATION_MARKER})
    if marker.get("finished") and extra:
        return f"it holds files that transfer evaluate did not write ({', '.join(extra[:5])})"
    return None


class EvaluationFolder:
    """An evaluation being written: into ``<output>.partial``, renamed into place once complete.

    ``--output`` may replace an earlier evaluation that transfer wrote there,
    never a folder of the user's.
    """

    def __init__(self, final: str, command: str = "transfer evaluate"):
        """Check the destination now, before any slow work; ``command`` names what writes it, in messages."""
        self.final = os.path.abspath(final)
        self.staging = self.final + STAGING_SUFFIX
        check_writable(os.path.dirname(self.final), "--output")
        for path in (self.final, self.staging):
            problem = evaluation_problem(path)
            if problem:
                raise RunError(f"--output {path!r} exists and {problem}; {command} replaces only a folder it "
                               "wrote: choose another --output.")

    def start(self) -> None:
        if os.path.lexists(self.staging):
            shutil.rmtree(self.staging)
        make_dirs(self.staging, "--output")
        self._mark(finished=False)

    def path(self, filename: str) -> str:
        return os.path.join(self.staging, filename)

    def _mark(self, finished: bool) -> None:
        files = sorted(os.listdir(self.staging)) if finished else []
        write_json(self.path(EVALUATION_MARKER), {"tool": "transfer", "format": FORMAT_VERSION, "finished": finished,
                                                  "files": [f for f in files if f != EVALUATION_MARKER]})

    def commit(self) -> str:
        """The marker (listing the files) last, then into place; an earlier evaluation there goes."""
        self._mark(finished=True)
        problem = evaluation_problem(self.final)
        if problem:
            raise RunError(f"--output {self.final!r} appeared while evaluating and {problem}; the evaluation is in "
                           f"{self.staging!r}.")
        if os.path.lexists(self.final):
            old = os.path.join(os.path.dirname(self.final), f".{os.path.basename(self.final)}.old-{uuid.uuid4().hex[:12]}")
            os.rename(self.final, old)
            os.rename(self.staging, self.final)
            shutil.rmtree(old)
        else:
            os.rename(self.staging, self.final)
        return self.final


class RunFolder:
    """A run being written: files go to a staging folder that :meth:`commit` renames into place.

    Only folders that transfer made are ever deleted: a leftover staging folder
    carries the staging marker, and ``--overwrite`` replaces only a finished
    run (its marker, written last, lists its files) that holds nothing else.
    A leftover staging folder with a backup (a run that can be resumed) is
    deleted only with ``--overwrite``; ``resume`` continues it instead.
    """

    def __init__(self, output_dir: str, name: str, overwrite: bool = False, data_dir: str | None = None,
                 resume: bool = False):
        """Check the name and the destination now (before any slow work); nothing is made before :meth:`start`."""
        check_name(name)
        self.name, self.overwrite, self.resume = name, overwrite, resume
        self.final = os.path.join(output_dir, name)
        self.staging = self.final + STAGING_SUFFIX
        check_writable(output_dir, "--output-dir")
        if data_dir is not None:
            check_apart([self.final, self.staging], data_dir)
        checks = [self._check_final, self._check_staging]
        for check in reversed(checks) if resume else checks:  # --resume: first, whether there is a run to continue
            check()

    def _check_final(self, state: str = "already exists") -> None:
        if not os.path.lexists(self.final):
            return
        problem = replace_problem(self.final)
        if problem:
            raise RunError(f"{self.final!r} {state}, and --overwrite only replaces a finished run of transfer: "
                           f"{problem}. Choose another --name or --output-dir.")
        if not self.overwrite:
            raise RunError(f"run folder {self.final!r} {state}; choose another --name or pass --overwrite.")

    def _check_staging(self) -> None:
        if os.path.lexists(self.staging) and (os.path.islink(self.staging) or _read_marker(self.staging) is None):
            raise RunError(f"{self.staging!r} is where this run is written until it finishes, and it holds something "
                           "that transfer did not make; move it away or choose another --name.")
        resumable = os.path.lexists(self.staging) and self.latest_backup() is not None
        if self.resume and not os.path.lexists(self.staging):
            raise RunError(f"--resume: there is no unfinished run {self.staging!r} to continue; "
                           "train without --resume, or check --name and --output-dir.")
        if self.resume and not resumable:
            raise RunError(f"--resume: {self.staging!r} stopped before its first epoch finished, so there is nothing "
                           "to continue; train again without --resume.")
        if resumable and not (self.resume or self.overwrite):
            raise RunError(f"{self.staging!r} holds an unfinished run that can be continued: add --resume to continue "
                           "it, or --overwrite to delete it and start again.")

    def latest_backup(self) -> str | None:
        return latest_backup(self.staging)

    def new_backup(self, epochs: int) -> str:
        """An empty folder for the state after ``epochs`` epochs (one that a kill cut short is emptied)."""
        folder = os.path.join(self.staging, BACKUP_FOLDER, f"epoch-{epochs:06d}")
        if os.path.lexists(folder):
            shutil.rmtree(folder)
        os.makedirs(folder)
        return folder

    def keep_backup(self, folder: str) -> None:
        """Once ``folder`` is complete (its state file written last), the older backups go."""
        parent = os.path.dirname(folder)
        for name in os.listdir(parent):
            if os.path.join(parent, name) != folder:
                shutil.rmtree(os.path.join(parent, name))

    def start(self) -> None:
        if self.resume:
            log.info("resuming the run in %s", self.staging)
            return
        if os.path.lexists(self.staging):
            self._check_staging()
            log.warning("removing %s, left by an earlier run that did not finish", self.staging)
            shutil.rmtree(self.staging)
        make_dirs(self.staging, "--output-dir")
        _write_marker(self.staging, self.name, finished=False)
        log.info("writing the run to %s; it becomes %s when training finishes", self.staging, self.final)

    def path(self, filename: str) -> str:
        return os.path.join(self.staging, filename)

    def commit(self) -> str:
        """Mark the run finished (the marker is its last file) and move it into place; an earlier run goes last."""
        if os.path.exists(self.path(CHECKPOINT_FILE)):
            os.remove(self.path(CHECKPOINT_FILE))  # model.keras holds the same weights
        shutil.rmtree(self.path(BACKUP_FOLDER), ignore_errors=True)  # only --resume needed it, and this
        if os.path.exists(self.path(FINGERPRINT_FILE)):
            os.remove(self.path(FINGERPRINT_FILE))
        _write_marker(self.staging, self.name, finished=True)
        self._check_final(f"appeared or changed while training (the new run is in {self.staging!r})")
        old = None
        if os.path.lexists(self.final):
            old = os.path.join(os.path.dirname(self.final), f".{self.name}.old-{uuid.uuid4().hex[:12]}")
            os.rename(self.final, old)
        os.rename(self.staging, self.final)
        if old:
            shutil.rmtree(old)
        return self.final


def json_text(data: Any, *, sort_keys: bool = False) -> str:
    """JSON that every parser reads: NaN and infinities, which ``json.dumps`` writes bare, become null."""
    return json.dumps(_finite(data), indent=2, sort_keys=sort_keys, allow_nan=False, default=str)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def write_json(path: str, data: Any) -> None:
    """Write JSON atomically: readers see the old file or the new one, never half of one."""
    write_text(path, json_text(data, sort_keys=True) + "\n")


def write_text(path: str, text: str) -> None:
    """Write atomically, with the permissions that the user's umask gives (``mkstemp`` alone makes 0600)."""
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            os.fchmod(f.fileno(), _file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@functools.cache
def _file_mode() -> int:
    """0o666 less the umask, read without changing it where the system can say (``os.umask`` sets while it reads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            mask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


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
    """Read a run folder, with a clear error when it is not one, did not finish or was edited out of shape."""
    path = inputs.path(path, "path")
    if not os.path.exists(path):
        raise RunError(f"{path!r} does not exist.")
    marker = _read_marker(path)
    if path.rstrip("/").endswith(STAGING_SUFFIX) or (marker is not None and not marker.get("finished")):
        raise RunError(f"{path!r} is a run that did not finish; train again to replace it.")
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise RunError(f"{path!r} is not a run folder (no {CONFIG_FILE}).")
    try:
        with open(config_path, encoding="utf-8") as f:
            record = json.load(f)
        labels = record["model"]["labels"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RunError(f"{config_path!r} is unreadable or not a transfer config ({error}).") from None
    if not (isinstance(labels, list) and labels and all(isinstance(label, str) for label in labels)) or any(
            label_problem(label) for label in labels) or len(set(labels)) != len(labels):
        raise RunError(f"{config_path!r}: model.labels must be a list of distinct class names, one line each; "
                       "restore the file or train again.")
    run = Run(path, record)
    if not os.path.isfile(run.model_path):
        raise RunError(f"{path!r} has no {os.path.basename(run.model_path)}.")
    return run
