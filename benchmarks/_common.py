"""Shared by the benchmarks: arguments, a subset of the photos, timing. Not part of the library.

Every benchmark runs its baseline and its candidate in the same process, one
after the other, and prints one summary line with the ratio, because this
machine is shared and absolute timings are noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
DEFAULT_DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "cats_vs_dogs"))


def parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: where the photos are, which backbone, what size."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", default=DEFAULT_DATA,
                   help="cats_vs_dogs with train/ and validation/ (default: %(default)s)")
    p.add_argument("--backbone", default="mobilenetv2")
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=32)
    return p


@contextlib.contextmanager
def subset(data: str, per_class: dict[str, int]):
    """A temporary copy of the first N images per class of each split (hard links when possible), removed after.

    A copy, not symlinks: the audit refuses symlinks that lead outside the dataset folder.
    """
    root = tempfile.mkdtemp(prefix="transfer-bench-")
    try:
        for split, n in per_class.items():
            for label in sorted(os.listdir(os.path.join(data, split))):
                source = os.path.join(data, split, label)
                target = os.path.join(root, split, label)
                os.makedirs(target)
                for name in sorted(os.listdir(source))[:n]:
                    _link_or_copy(os.path.join(source, name), os.path.join(target, name))
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def image_paths(data: str, split: str, limit: int) -> list[str]:
    """The first ``limit`` images of a split, alternating classes so both are represented."""
    folders = [os.path.join(data, split, c) for c in sorted(os.listdir(os.path.join(data, split)))]
    per_class = [sorted(os.path.join(f, n) for n in os.listdir(f)) for f in folders]
    mixed = [p for group in zip(*per_class) for p in group]
    return mixed[:limit]


def timed(function, *args, **kwargs):
    """(result, wall seconds)."""
    result, seconds, _ = timed_cpu(function, *args, **kwargs)
    return result, seconds


def timed_cpu(function, *args, **kwargs):
    """(result, wall seconds, CPU seconds of this process, all threads).

    CPU time is much less disturbed than wall time by other work on a shared machine.
    """
    start, start_cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start, time.process_time() - start_cpu
