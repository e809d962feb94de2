"""Pretrained transfer on cats vs dogs: `transfer train` from a cold cache against the Keras-guide recipe.

    python benchmarks/accuracy_pretrained.py [--backbone efficientnet_lite0] [--set KEY=VALUE ...]
                                             [--baseline-epochs 3] [--data ../shared/data/cats_vs_dogs]

Candidate: the command a new user types, ``transfer train DATA --backbone B`` (plus any ``--set`` options,
as CLI flags), run as a subprocess with an empty cache folder, so the audit, the weight conversion and
the features are all computed; wall time from start to exit (Python and TensorFlow start-up included),
CPU utilisation of both cores, and the run's own per-stage seconds (metrics.json). Baseline, in the same
run on the same machine: the Keras transfer-learning guide's recipe on the same pretrained backbone
(image_dataset_from_directory, frozen base called with training=False, pooling, dropout 0.2, Dense,
Adam 1e-3), which recomputes the frozen backbone on every image in every epoch; ``--baseline-epochs``
of it (0: skip). One JSON line on stdout; progress on stderr.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import _common


def run_cli(args, work: str) -> dict:
    """The candidate: the CLI in a subprocess, cold cache; (summary, wall seconds, CPU seconds)."""
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in (s.split("=", 1) for s in args.set)]
    command = [sys.executable, os.path.join(_common.ROOT, "cli.py"), "train", args.data, "--backbone", args.backbone,
               "-o", os.path.join(work, "models"), "--name", "run", "--cache-dir", os.path.join(work, "cache"),
               "--json", *flags]
    print(" ".join(command[1:]), file=sys.stderr)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, env={**os.environ, "KERAS_HOME": work}, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    summary = json.loads(done.stdout)
    return {"val_accuracy": round(summary["metrics"]["val"]["accuracy"], 4), "wall_seconds": round(wall, 1),
            "cpu_utilisation": round(cpu / wall / os.cpu_count(), 2), "stages": summary["metrics"].get("seconds"),
            "epochs": summary["metrics"]["epochs"]}


def run_keras_guide(args, epochs: int) -> dict:
    """The guide's recipe on the same backbone with the same ImageNet weights, frozen, recomputed every epoch."""
    import keras

    from transfer import backbones
    from transfer.config import TrainConfig
    from transfer.layers import Preprocess

    spec, config = backbones.resolve(TrainConfig(data_dir=args.data, backbone=args.backbone))
    size = (config.image_size, config.image_size)
    start = time.perf_counter()
    cpu_start = time.process_time()
    train_ds = keras.utils.image_dataset_from_directory(os.path.join(args.data, "train"), image_size=size,
                                                        batch_size=32, seed=1, verbose=False)
    val_ds = keras.utils.image_dataset_from_directory(os.path.join(args.data, "validation"), image_size=size,
                                                      batch_size=32, shuffle=False, verbose=False)
    base = backbones.build_backbone(spec, config)
    base.trainable = False
    inputs = keras.Input(size + (3,))
    x = keras.tree.flatten(base(Preprocess(spec.preprocessing)(inputs), training=False))[0]  # a one-element list
    x = keras.layers.Dropout(0.2)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, keras.layers.Dense(len(train_ds.class_names), activation="softmax")(x))
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(train_ds.prefetch(2), validation_data=val_ds.prefetch(2), epochs=epochs, verbose=2)
    wall = time.perf_counter() - start
    return {"val_accuracy": round(history.history["val_accuracy"][-1], 4), "epochs": epochs,
            "wall_seconds": round(wall, 1), "seconds_per_epoch": round(wall / epochs, 1),
            "cpu_utilisation": round((time.process_time() - cpu_start) / wall / os.cpu_count(), 2)}


def main() -> None:
    p = _common.parser(__doc__.split("\n")[0])
    p.set_defaults(backbone="efficientnet_lite0")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a train option, e.g. epochs=5")
    p.add_argument("--baseline-epochs", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="accuracy_pretrained-") as work:
        candidate = run_cli(args, work)
    result = {"benchmark": "accuracy_pretrained", "backbone": args.backbone, "options": args.set,
              "transfer": candidate, "machine": f"{os.cpu_count()} cores"}
    if args.baseline_epochs:
        sys.stdout.flush()
        with _common.contextlib.redirect_stdout(sys.stderr):
            baseline = run_keras_guide(args, args.baseline_epochs)
        result["keras_guide"] = baseline
        result["speedup_per_epoch_of_the_guide"] = round(baseline["seconds_per_epoch"] / candidate["wall_seconds"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
