"""Does our transfer path transfer? Small target sets: ImageNet-pretrained, from scratch, from a base of our own.

    python benchmarks/accuracy_transfer.py --base models/cvd-base [--data ../shared/data/cats_vs_dogs]
    python benchmarks/accuracy_transfer.py --pretrained-only --sizes 10,25,50,100

The base is a run trained on cats_vs_dogs/train (e.g. by accuracy_scratch.py --output models/cvd-base-dir);
without --base it is trained here with the small-data-scratch preset. For N in 25, 50, 100, a target set of
N images per class is drawn (seeded) from validation/, the rest of validation/ is the evaluation set, and
three models are trained on it: the small-data-transfer preset (EfficientNet-Lite0 with its ImageNet
weights), the small-data-scratch preset from scratch, and a new head + fine-tuning on the base
(--backbone BASE). One JSON line per N on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_target(data: str, n: int, seed: int, out: str) -> str:
    """out/train/<class>/ with n images per class from validation/, out/val/<class>/ with the rest (copies)."""
    source = os.path.join(data, "validation")
    for cls in sorted(os.listdir(source)):
        files = sorted(os.listdir(os.path.join(source, cls)))
        random.Random(seed).shuffle(files)
        for split, chosen in (("train", files[:n]), ("val", files[n:])):
            os.makedirs(os.path.join(out, split, cls), exist_ok=True)
            for name in chosen:
                shutil.copy2(os.path.join(source, cls, name), os.path.join(out, split, cls, name))
    return out


def run(config_values: dict, preset: str | None) -> tuple[float, float]:
    from transfer.presets import apply_preset
    from transfer.training import train

    started = time.perf_counter()
    result = train(apply_preset(preset, config_values))
    return result.metrics["val"]["accuracy"], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "cats_vs_dogs"))
    parser.add_argument("--base", default=None, help="run folder of a model trained on cats_vs_dogs/train")
    parser.add_argument("--sizes", default="25,50,100")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrained-only", action="store_true",
                        help="only the pretrained column (the scratch preset takes 14 minutes per size)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    work = tempfile.mkdtemp(prefix="accuracy_transfer-")
    common = {"output_dir": os.path.join(work, "runs"), "overwrite": True, "verbose": 0, "seed": args.seed}
    base = args.base
    if base is None and not args.pretrained_only:
        run({"data_dir": args.data, "name": "base", **common}, "small-data-scratch")
        base = os.path.join(work, "runs", "base")
    for n in (int(s) for s in args.sizes.split(",")):
        target = make_target(args.data, n, args.seed, os.path.join(work, f"target{n}"))
        runs = {"pretrained": ({"data_dir": target, "name": f"pretrained{n}", **common}, "small-data-transfer")}
        if not args.pretrained_only:
            runs["scratch"] = ({"data_dir": target, "name": f"scratch{n}", **common}, "small-data-scratch")
            runs["transfer"] = ({"data_dir": target, "name": f"transfer{n}", "backbone": base, "epochs": 10,
                                 "fine_tune_epochs": 10, "augment": "light", **common}, None)
        line = {"benchmark": "accuracy_transfer", "per_class": n, "eval_images": 1000 - 2 * n}
        for column, (values, preset) in runs.items():
            accuracy, seconds = run(values, preset)
            line.update({f"{column}_accuracy": round(accuracy, 4), f"{column}_seconds": round(seconds, 1)})
        print(json.dumps(line), flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
