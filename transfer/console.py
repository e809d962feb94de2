"""The terminal: TensorFlow's start-up kept quiet, the device said once, progress bars, a run's summary table.

TensorFlow's C++ core logs through absl before absl's logging is initialised,
and such messages go to stderr whatever ``TF_CPP_MIN_LOG_LEVEL`` says: the
"All log messages before absl::InitializeLog()" warning, oneDNN and CUDA notes
and, on a machine without a GPU, "failed call to cuInit", which reads like a
failure. Two libraries loaded by ``import tensorflow`` (libtensorflow_framework
and the profiler plugin, which links its own copy of absl) each print them, so
they came twice. They are written to file descriptor 2, past ``sys.stderr``, so
the only way to keep them off the terminal is to point that descriptor
elsewhere while TensorFlow starts: :func:`quiet_start` does it for the first
``import tensorflow`` and the first device query, wherever they happen, and
nothing after. ``-v`` (:func:`loud`) leaves TensorFlow as it is.

Importing this module must not import TensorFlow: the CLI uses it before any command runs.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import sys
import tempfile
from collections import Counter
from typing import Any


#: what quiet_start sets, unless the user set it: C++ errors (not warnings) still show once TensorFlow has started
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "GRPC_VERBOSITY": "ERROR"}
_set_by_us: dict[str, str] = {}


@contextlib.contextmanager
def silenced(fds: tuple[int, ...] = (2,), replay: bool = True):
    """Keep what is written to the file descriptors ``fds`` (C++ libraries write there, not to ``sys.stderr``) out
    of the terminal; if the block raises, and ``replay``, write it to stderr, so a real failure shows its messages."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(fd) for fd in fds]
    failed = False
    with tempfile.TemporaryFile() as captured:
        try:
            with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
                for fd in fds:
                    os.dup2(captured.fileno(), fd)
                yield
        except Exception:
            failed = True
            raise
        finally:
            for fd, copy in zip(fds, saved):
                os.dup2(copy, fd)
                os.close(copy)
            if failed and replay:
                captured.seek(0)
                os.write(2, captured.read())


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    """Finds nothing itself: the first ``import tensorflow`` (from any module) runs, with the first device query,
    inside :func:`silenced`; then it takes itself off ``sys.meta_path``."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        _uninstall()
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            try:
                with silenced():
                    execute(module)
                    module.config.list_physical_devices()  # initialises CUDA: "failed call to cuInit" without a GPU
            finally:
                del spec.loader.exec_module  # the loader as it was

        spec.loader.exec_module = exec_module
        return spec


def _uninstall() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _QuietTensorFlow)]


def quiet_start() -> None:
    """TensorFlow, when it is imported, starts without its C++ start-up logs; its Python warnings are hidden too."""
    for name, value in QUIET_ENV.items():
        if name not in os.environ:
            os.environ[name] = _set_by_us[name] = value
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlow) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlow())


def loud() -> None:
    """Undo :func:`quiet_start` (``-v``): TensorFlow's own logs, as its environment variables ask."""
    _uninstall()
    for name, value in list(_set_by_us.items()):
        if os.environ.get(name) == value:
            del os.environ[name]
        del _set_by_us[name]
    logging.getLogger("tensorflow").setLevel(logging.NOTSET)


def device_line() -> str:
    """Which device TensorFlow computes on, in words: ``Using CPU (2 cores)``, ``Using 1 GPU: NVIDIA H100``."""
    from .devices import describe

    device = describe()
    if not device["gpus"]:
        return f"Using CPU ({device['cpu_cores']} core{'s' if device['cpu_cores'] != 1 else ''})"
    names = ", ".join(f"{n} x {name}" if n > 1 else name for name, n in Counter(device["gpus"]).items())
    count = len(device["gpus"])
    return f"Using {count} GPU{'s' if count > 1 else ''}: {names}"


def bar(iterable=None, *, total: int | None = None, desc: str, unit: str, enabled: bool = True):
    """A progress bar on stderr with rate and ETA, only on a terminal: logs (CI, a pipe) get none of its redraws.

    ``enabled=False`` (``--quiet``) shows nothing anywhere. Usable as an
    iterable wrapper or, with ``total``, as a context manager updated by hand.
    """
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=sys.stderr,
                disable=None if enabled else True)


def summary_table(run_dir: str, metrics: dict[str, Any], report: str | None = None) -> str:
    """The end of ``transfer train``: where the run is, its best epoch, validation (and test), time per stage."""
    rows = [("run folder", run_dir)]
    if report:
        rows.append(("report", report))
    rows.append(("best epoch", _best_epoch(metrics)))
    for split in ("val", "test"):
        if split in metrics:
            result = metrics[split]
            rows.append((f"{split} accuracy", f"{result['accuracy']:.4f} (loss {result['loss']:.4f}, "
                                              f"{result['images']} images)"))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name.ljust(width)}  {value}" for name, value in rows]
    return "\n".join(lines + [""] + _time_table(metrics))


def _best_epoch(metrics: dict[str, Any]) -> str:
    """As the epoch lines count: within its phase (metrics.json counts across both)."""
    epoch, phase = metrics["best_epoch"], metrics["best_phase"]
    epochs = metrics.get("epochs", {})
    before = epochs.get("head", 0) if phase == "fine_tune" else 0
    return f"{epoch - before}/{epochs.get(phase, '?')} ({phase}), epoch {epoch} of the run"


def _time_table(metrics: dict[str, Any]) -> list[str]:
    """Seconds per stage (metrics.json's ``seconds``), with the epochs of the two training phases."""
    seconds = {stage: s for stage, s in metrics.get("seconds", {}).items() if stage != "features"}
    epochs = metrics.get("epochs", {})
    lines = [f"{'stage':<10}{'epochs':>8}{'seconds':>10}"]
    lines += [f"{stage:<10}{epochs.get(stage, ''):>8}{s:>10.1f}" for stage, s in seconds.items()]
    lines.append(f"{'total':<10}{'':>8}{sum(seconds.values()):>10.1f}")
    features = metrics.get("seconds", {}).get("features")
    if features:
        lines.append(f"(of which {sum(features):.1f} s computing the backbone's features)")
    return lines
