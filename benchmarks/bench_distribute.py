"""--distribute multiworker: training images per second with 1 worker vs 2 workers on this machine (127.0.0.1).

Each worker is a ``transfer train`` process; the two are joined by ``TF_CONFIG``
as two machines would be. Both runs keep the same ``--batch-size`` (per replica),
so the two workers take twice the images per step. Images per second count the
epochs after the first (which decodes the images and builds the graph), from
the chief's history.csv. With a pretrained backbone (cached features) it also
prints where the chief's time went (metrics.json's stages): the shared audit, the
features it computed (half of them with two workers) and phase 1 with the
features' exchange.

    python benchmarks/bench_distribute.py --backbone smallcnn --image-size 64 --epochs 4
    python benchmarks/bench_distribute.py --backbone efficientnet_lite0 --image-size 224 --epochs 4 --pin
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile

from _common import ROOT, parser, subset

from transfer.training.distribute import local_cluster  # no TensorFlow here: only the workers import it


def train(data: str, out: str, workers: int, args) -> tuple[float, dict]:
    """Train on ``workers`` local processes; the chief's images per second after its first epoch, and its stages'
    seconds."""
    command = [sys.executable, "-m", "cli", "train", data, "--backbone", args.backbone, "--image-size",
               str(args.image_size), "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
               "--fine-tune-epochs", "0", "--augment", "none", "--name", "bench", "--quiet"]
    cluster = local_cluster(workers)
    procs = []
    try:
        for index in range(workers):
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
            env.pop("TF_CONFIG", None)
            if workers > 1:
                env["TF_CONFIG"] = json.dumps(cluster[index])
            distribute = "multiworker" if workers > 1 else "none"
            pin = ["taskset", "-c", str(index % os.cpu_count())] if args.pin else []  # one core each: as machines
            procs.append(subprocess.Popen([*pin, *command, "--distribute", distribute, "-o", os.path.join(out, str(index)),
                                           "--cache-dir", os.path.join(out, f"cache{index}")],
                                          cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                          text=True))
        for proc in procs:
            _, err = proc.communicate(timeout=3600)
            if proc.returncode:
                sys.exit(err[-3000:])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    from transfer import runs

    run = os.path.join(out, "0", "bench")
    with open(os.path.join(run, runs.HISTORY_FILE), newline="") as f:
        elapsed = [float(row["elapsed_seconds"]) for row in csv.DictReader(f)]
    with open(os.path.join(run, runs.CONFIG_FILE)) as f:
        images = json.load(f)["data"]["counts"]["train"]
    with open(os.path.join(run, runs.METRICS_FILE)) as f:
        seconds = json.load(f)["seconds"]
    return (len(elapsed) - 1) * sum(images.values()) / (elapsed[-1] - elapsed[0]), seconds


def main():
    p = parser(__doc__.split("\n\n")[0])
    p.set_defaults(backbone="smallcnn", image_size=64, batch_size=32)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--per-class", type=int, default=500, help="training photos per class")
    p.add_argument("--pin", action="store_true", help="pin worker i to core i (taskset): workers that share no "
                   "core, as on separate machines")
    args = p.parse_args()
    with subset(args.data, {"train": args.per_class, "validation": 50}) as data, \
            tempfile.TemporaryDirectory() as out:
        one, one_seconds = train(data, os.path.join(out, "one"), 1, args)
        two, two_seconds = train(data, os.path.join(out, "two"), 2, args)
    print(f"{args.backbone} {args.image_size}px, --batch-size {args.batch_size} per replica, "
          f"{2 * args.per_class} training photos: 1 worker {one:.0f} images/s, 2 workers on this machine "
          f"{two:.0f} images/s ({two / one:.2f}x)")
    for stage in ("audit", "features", "head"):
        if stage in one_seconds:
            print(f"  {stage:8s} the chief's seconds: 1 worker {_seconds(one_seconds[stage]):.1f}, "
                  f"2 workers {_seconds(two_seconds[stage]):.1f}")


def _seconds(value) -> float:
    """A stage's seconds; ``features`` is a list (one per cache)."""
    return sum(value) if isinstance(value, list) else value


if __name__ == "__main__":
    main()
