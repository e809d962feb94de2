"""--distribute multiworker: training images per second with 1 worker vs 2 workers on this machine (127.0.0.1).

Each worker is a ``transfer train`` process; the two are joined by ``TF_CONFIG``
as two machines would be. Both runs keep the same ``--batch-size`` (per replica),
so the two workers take twice the images per step. Images per second count the
epochs after the first (which decodes the images and builds the graph), from
the chief's history.csv.

    python benchmarks/bench_distribute.py --backbone smallcnn --image-size 64 --epochs 4
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import tempfile

from _common import ROOT, parser, subset


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def train(data: str, out: str, workers: int, args) -> float:
    """Train on ``workers`` local processes; the chief's images per second after its first epoch."""
    command = [sys.executable, "-m", "cli", "train", data, "--backbone", args.backbone, "--image-size",
               str(args.image_size), "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
               "--fine-tune-epochs", "0", "--augment", "none", "--name", "bench", "--quiet"]
    cluster = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    procs = []
    try:
        for index in range(workers):
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
            env.pop("TF_CONFIG", None)
            if workers > 1:
                env["TF_CONFIG"] = json.dumps({"cluster": {"worker": cluster},
                                               "task": {"type": "worker", "index": index}})
            distribute = "multiworker" if workers > 1 else "none"
            procs.append(subprocess.Popen([*command, "--distribute", distribute, "-o", os.path.join(out, str(index)),
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
    return (len(elapsed) - 1) * sum(images.values()) / (elapsed[-1] - elapsed[0])


def main():
    p = parser(__doc__.split("\n\n")[0])
    p.set_defaults(backbone="smallcnn", image_size=64, batch_size=32)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--per-class", type=int, default=500, help="training photos per class")
    args = p.parse_args()
    with subset(args.data, {"train": args.per_class, "validation": 50}) as data, \
            tempfile.TemporaryDirectory() as out:
        one = train(data, os.path.join(out, "one"), 1, args)
        two = train(data, os.path.join(out, "two"), 2, args)
    print(f"{args.backbone} {args.image_size}px, --batch-size {args.batch_size} per replica, "
          f"{2 * args.per_class} training photos: 1 worker {one:.0f} images/s, 2 workers on this machine "
          f"{two:.0f} images/s ({two / one:.2f}x)")


if __name__ == "__main__":
    main()
