"""The default command against ``--backbone auto`` on each data set, in one run: val accuracy, seconds, the ratio.

Each set is trained twice through the real CLI (a fresh process each), with
one feature cache folder for both: first the default command, then the same
with ``--backbone auto`` (plus any ``--auto-option``). The default's features
are then in the cache when auto measures that backbone, so auto's seconds are
for a cache that already holds the default backbone's features; the features
column of its table says which candidates were computed cold and how long they
took. Prints one line per set and run, auto's comparison table, then the means
and the ratio of auto to the default. ``--variant LABEL=OPTIONS`` (repeatable)
compares other commands with the default instead, e.g. a pair of backbones.

    python benchmarks/bench_auto.py ../shared/data/monkey_species ../shared/data/blood_cells_pbc \\
        ../shared/data/cats_vs_dogs --cache-dir /tmp/auto-cache
    python benchmarks/bench_auto.py ../shared/data/blood_cells_pbc \\
        --variant 'pair=--backbone efficientnet_lite0+efficientnet_lite1'
    python benchmarks/bench_auto.py ../shared/data/monkey_species --limit train=25   # a small set

``--limit SPLIT=N`` (repeatable) trains on the first N images per class of that split (hard links in a
temporary folder), the other splits whole: small sets from the large ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

from _common import ROOT, subset

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}


def train(data: str, work: str, name: str, cache_dir: str, extra: list[str]) -> tuple[dict, float]:
    """One run of ``transfer train DATA`` with ``extra`` options: (its --json summary, wall seconds)."""
    command = [sys.executable, "-m", "cli", "train", data, "-o", work, "--name", name, "--overwrite",
               "--cache-dir", cache_dir, "--json", "-q", *extra]
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout), seconds


def variants(args) -> list[tuple[str, list[str]]]:
    """The runs of each set after the default: ``--variant LABEL=OPTIONS`` each, or ``--backbone auto``."""
    if not args.variant:
        return [("auto", ["--backbone", "auto", *args.auto_option])]
    runs = []
    for text in args.variant:
        label, _, options = text.partition("=")
        runs.append((label, shlex.split(options)))
    return runs


def limited(data: str, limits: list[str]):
    """``data`` itself, or a temporary copy with ``--limit SPLIT=N`` applied (first N per class; other splits whole)."""
    if not limits:
        return contextlib.nullcontext(data)
    named = {split: int(n) for split, _, n in (text.partition("=") for text in limits)}
    splits = [s for s in sorted(os.listdir(data)) if os.path.isdir(os.path.join(data, s))]
    return subset(data, {split: named.get(split) for split in splits})


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sets", nargs="+", help="data set folders")
    p.add_argument("--cache-dir", default=None, help="feature cache shared by every run [default: a temporary one]")
    p.add_argument("--auto-option", action="append", default=[],
                   help="an extra option for the auto runs, e.g. --auto-option=--time-limit=10m (repeatable)")
    p.add_argument("--variant", action="append", default=[],
                   help="LABEL=OPTIONS, a run to compare with the default instead of --backbone auto, e.g. "
                        "'pair=--backbone efficientnet_lite0+efficientnet_lite1' (repeatable)")
    p.add_argument("--limit", action="append", default=[],
                   help="SPLIT=N: only the first N images per class of that split, e.g. train=25 (repeatable)")
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="bench-auto-")
    cache_dir = args.cache_dir or os.path.join(work, "cache")
    runs = [("default", []), *variants(args)]
    results = {kind: [] for kind, _ in runs}
    for folder in args.sets:
        name = os.path.basename(os.path.normpath(folder))
        with limited(folder, args.limit) as data:  # one copy for every run of the set: the cache keys match
            for kind, extra in runs:
                summary, seconds = train(data, work, f"{kind}-{name}", cache_dir, extra)
                accuracy = summary["metrics"]["val"]["accuracy"]
                results[kind].append((accuracy, seconds))
                with open(os.path.join(summary["run_dir"], "config.json"), encoding="utf-8") as f:
                    record = json.load(f)
                print(f"{name:18s} {kind:8s} {record['config']['backbone']:20s} val accuracy {accuracy:.4f} "
                      f"in {seconds:6.1f} s", flush=True)
                if record.get("backbone_choice"):
                    from transfer.selection import Trial, table

                    choice = record["backbone_choice"]
                    print(f"    {choice['method']}")
                    for line in table([Trial(**row) for row in choice["candidates"]]):
                        print("    " + line, flush=True)
    means = {kind: [sum(v[i] for v in rows) / len(rows) for i in (0, 1)] for kind, rows in results.items()}
    for kind, (accuracy, seconds) in means.items():
        print(f"mean {kind:8s} val accuracy {accuracy:.4f}, {seconds:.1f} s a set")
    for kind, _ in runs[1:]:
        print(f"{kind} / default: accuracy {means[kind][0] - means['default'][0]:+.4f}, "
              f"time x{means[kind][1] / means['default'][1]:.2f}")


if __name__ == "__main__":
    main()
