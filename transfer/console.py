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
    from .runs import PHASES

    before = sum(epochs.get(earlier, 0) for earlier in PHASES[:PHASES.index(phase)]) if phase in PHASES else 0
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


# ---- what the commands print: text only, the CLI echoes it ---------------------------------------------------------

def show(path: str) -> str:
    """A path that can be printed, even when its name is not valid UTF-8."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def backbones_table(rows: list[dict]) -> str:
    """`transfer backbones`: one aligned line per registry entry."""
    header = ("name", "kind", "size", "params", "preprocessing", "unfreeze", "imagenet weights")
    table = [header] + [(r["name"], r["kind"], str(r["input_size"]), count(r["params"]),
                         r["preprocessing"], r["unfreeze"], r["weights"]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table)


def inspection(r: dict) -> str:
    """`transfer inspect`: the audit's counts per class and split, then every problem file."""
    splits = list(r["counts"])
    width = max(len(c) for c in r["classes"])
    lines = [f"{r['root']}: {len(r['classes'])} classes, {r['images']} images "
             f"({'split folders' if r['split_source'] == 'folders' else 'random validation split'})",
             "  " + "class".ljust(width) + "".join(s.rjust(8) for s in splits)]
    lines += ["  " + c.ljust(width) + "".join(str(r["counts"][s][c]).rjust(8) for s in splits) for c in r["classes"]]
    lines.append(f"imbalance (largest/smallest train class): {r['imbalance_ratio']}")
    if r["sizes"]:
        lines.append("sizes (w x h): " + ", ".join(f"{k} {v[0]}x{v[1]}" for k, v in r["sizes"].items()))
    lines.append("formats: " + ", ".join(f"{k} {v}" for k, v in r["formats"].items()))
    lines.append(f"skipped: {len(r['skipped'])}, outside class folders: {len(r['unused'])}, "
                 f"ignored: {r['ignored']} non-image and {r['hidden_or_system']} hidden/system files, duplicate "
                 f"groups: {len(r['duplicates'])} ({len(r['leaks'])} across splits)")
    lines += [f"  skipped {row['path']}: {row['reason']}" for row in r["skipped"]]
    lines += [f"  note {row['path']}: {row['note']}" for row in r["notes"]]
    lines += [f"  not used {path}: outside any class folder" for path in r["unused"]]
    lines += [f"  leakage: {' = '.join(group)}" for group in r["leaks"]]
    return "\n".join(lines)


def diagnosis(d) -> str:
    """`transfer doctor`: how many of each finding, and the first few of each."""
    lines = [f"{d.root}: {d.images} images, {len(d.classes)} classes, features of {d.backbone} ({d.seconds:.0f} s)",
             f"  label issues      {len(d.label_issues):6d}",
             f"  near-duplicates   {len(d.near_duplicates):6d} group(s)",
             f"  outliers          {len(d.outliers):6d}"]
    lines += [f"  label? {show(issue['path'])}: given {show(issue['given'])}, looks like "
              f"{show(issue['suggested'])} (score {issue['score']:.2f})" for issue in d.label_issues[:10]]
    lines += [f"  {group['kind']} ({group['similarity']:.3f}): {' = '.join(map(show, group['paths']))}"
              for group in d.near_duplicates[:5]]
    lines += [f"  outlier {show(row['path'])} (similarity {row['similarity']:.2f} to {show(row['nearest'])})"
              for row in d.outliers[:5]]
    if d.output:
        lines.append(f"written: {d.output}")
    elif d.label_issues or d.near_duplicates or d.outliers:
        lines.append("(the full lists: --json, or -o FOLDER for CSV files, a contact sheet and report.html)")
    return "\n".join(lines)


def evaluation(m: dict, output: str) -> str:
    """`transfer evaluate`: accuracy, then precision, recall and f1 per class and averaged."""
    rows = [(label, r["precision"], r["recall"], r["f1"], r["support"]) for label, r in m["per_class"].items()]
    rows += [(f"{name} average", m[name]["precision"], m[name]["recall"], m[name]["f1"], m["images"])
             for name in ("macro", "weighted")]
    width = max(len(show(row[0])) for row in rows)
    lines = [f"{m['images']} images: accuracy {m['accuracy']:.4f}, top-{m['top_k']} accuracy "
             f"{m['top_k_accuracy']:.4f}, log loss {m['log_loss']:.4f}",
             "  " + "class".ljust(width) + "".join(h.rjust(11) for h in ("precision", "recall", "f1", "support"))]
    lines += ["  " + show(label).ljust(width) + f"{precision:11.4f}{recall:11.4f}{f1:11.4f}{support:11d}"
              for label, precision, recall, f1, support in rows]
    lines += [f"note: {note}" for note in m["notes"]]
    lines.append(f"written: {output}")
    return "\n".join(lines)


def failures(failed: list[tuple[str, str]]) -> list[str]:
    """The inputs that could not be read, one ``Error:`` line each (for stderr)."""
    return [f"Error: {show(path)}: {reason}" for path, reason in failed]


def predictions_table(result) -> str:
    """`transfer predict`: path, label, probability and the other top-k, tab-separated."""
    lines = []
    for p in result.predictions:
        others = ", ".join(f"{label} {prob:.3f}" for label, prob in p.top_k[1:])
        lines.append(f"{show(p.path)}\t{p.label}\t{p.probability:.3f}" + (f"\t{others}" if others else ""))
    return "\n".join(lines)


def predictions_json(result) -> dict:
    return {"predictions": [{**p.to_dict(), "path": show(p.path)} for p in result.predictions],
            "errors": [{"path": show(path), "error": reason} for path, reason in result.failures]}


def explanations_json(result) -> dict:
    return {"layer": result.layer, "output_dir": result.output_dir, "contact_sheet": result.contact_sheet,
            "images": [{**e.to_dict(), "path": show(e.path), "png": show(e.png)} for e in result.explanations],
            "errors": [{"path": show(p), "error": reason} for p, reason in result.failures]}


def explanations(result) -> str:
    """`transfer explain`: each image's label and heat map, then the contact sheet."""
    lines = [f"{show(e.path)}\t{e.label}\t{e.probability:.3f}\t{show(e.png)}" for e in result.explanations]
    if result.contact_sheet:
        lines.append(f"contact sheet: {result.contact_sheet} (layer {result.layer})")
    return "\n".join(lines)


def visualization(result) -> str:
    """`transfer visualize`: where the filters and each layer's activation maps went."""
    return "\n".join([f"filters of {result.filters_layer}: {result.filters}"] +
                     [f"activations of {name}: {path}" for name, path in result.activations.items()])
