"""Fine-tuning when it pays (issue 23, part 3): the default command, head only, against fine-tuning configurations.

Each configuration is the default command (`transfer train SET`, EfficientNet-Lite0, phase 1 on cached
features to convergence) plus fine-tuning options: a depth (--unfreeze), an optimizer and a learning rate,
--fine-tune-epochs E. Every run of one set shares a --cache-dir, so the pooled features are computed once
and each depth's boundary activations once: the first run of a depth says "cold". The table shows the
validation accuracy of the head alone (the last head epoch restored) and after each fine-tuning epoch, so a
probe of k epochs can be read off it, and where the seconds went (metrics.json's stages).

    python benchmarks/bench_finetune_probe.py --data ../shared/data/blood_cells_pbc --configs head,b5-sgd,b5-adam
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: name -> (--unfreeze, optimizer, learning rate[, --lr-schedule]); None: head only. b5 is Lite0's default depth
#: (blocks 6-7). A schedule applies to both phases, as the option does.
CONFIGS = {
    "head": None,
    "b5-sgd": ("after:block5c_add", "sgd", 1e-4),
    "b5-adam": ("after:block5c_add", "adam", 1e-4),
    "b5-adam3e-5": ("after:block5c_add", "adam", 3e-5),
    "b5-adam3e-4": ("after:block5c_add", "adam", 3e-4),
    "b5-adam-cosine": ("after:block5c_add", "adam", 1e-4, "cosine"),
    "b4-adam": ("after:block4c_add", "adam", 1e-4),
    "b6-adam": ("after:block6d_add", "adam", 1e-4),
}


def train(data: str, work: str, name: str, config, epochs: int, cache: str) -> dict:
    """One `transfer train` in its own process; its metrics, seconds and per-epoch validation accuracy."""
    command = [sys.executable, "-m", "cli", "train", data, "--name", name, "--output-dir", work, "--cache-dir", cache,
               "-q", "--json", "--fine-tune-epochs", str(epochs if config else 0)]
    if config:  # --fine-tune on: every configuration fine-tunes, whatever the probe of the default would decide
        unfreeze, optimizer, lr, *schedule = config
        command += ["--fine-tune", "on", "--unfreeze", unfreeze, "--fine-tune-optimizer", optimizer,
                    "--fine-tune-lr", str(lr), *(["--lr-schedule", *schedule] if schedule else [])]
    started = time.monotonic()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    wall = time.monotonic() - started
    run = os.path.join(work, name)
    with open(os.path.join(run, "metrics.json")) as f:
        metrics = json.load(f)
    with open(os.path.join(run, "history.csv")) as f:
        history = list(csv.DictReader(f))
    curve = {phase: [float(r["val_accuracy"]) for r in history if r["phase"] == phase and r.get("val_accuracy")]
             for phase in ("head", "fine_tune")}
    return {"wall": wall, "val": metrics["val"]["accuracy"], "seconds": metrics["seconds"], "curve": curve}


def row(data: str, name: str, result: dict, cold: bool) -> str:
    s = result["seconds"]
    head, ft = result["curve"]["head"], result["curve"]["fine_tune"]
    best_head = max(head) if head else float("nan")
    curve = " ".join(f"{a:.3f}" for a in ft) or "-"
    return (f"| {os.path.basename(data.rstrip('/'))} | {name}{' (cold)' if cold else ''} | {result['val']:.3f} | "
            f"{best_head:.3f} | {curve} | {result['wall']:.0f} | {s.get('features', '-')} | {s.get('head', 0):.0f} | "
            f"{s.get('fine_tune', 0):.0f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", action="append", required=True, help="a data folder (repeatable)")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    p.add_argument("--fine-tune-epochs", type=int, default=6)
    p.add_argument("--work", help="keep runs and caches here (default: a temporary folder, removed)")
    args = p.parse_args()
    names = args.configs.split(",")
    with tempfile.TemporaryDirectory(prefix="transfer-bench-ft-") as tmp:
        work = args.work or tmp
        print(f"bench_finetune: {len(os.sched_getaffinity(0))} cores, load {os.getloadavg()[0]:.1f}, "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; fine-tuning {args.fine_tune_epochs} epochs max")
        print("| set | config | val acc (restored best) | head best val acc | val acc per fine-tune epoch | wall s | "
              "features s (pooled, boundary) | head s | fine_tune s |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for data in args.data:
            cache, seen = os.path.join(work, "cache-" + os.path.basename(data.rstrip("/"))), set()
            for name in names:
                config = CONFIGS[name]
                depth = config[0] if config else "pooled"
                result = train(data, work, f"{os.path.basename(data.rstrip('/'))}-{name}", config,
                               args.fine_tune_epochs, cache)
                print(row(data, name, result, depth not in seen or "pooled" not in seen), flush=True)
                seen |= {depth, "pooled"}


if __name__ == "__main__":
    main()
