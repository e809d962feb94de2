"""What --resume costs: the seconds and bytes of one epoch's backup, in each phase, for a real backbone.

After every epoch a run writes the full model's weights, the optimizer's
variables and its state (training/resume.py). This times that write for the
phase-1 optimizer (the head's, Adam) and the phase-2 one (SGD with momentum
over the unfrozen top), with the weights the registry's ImageNet source gives,
against the baseline of Keras' own ``save_weights`` (.weights.h5) of the same model.

    python benchmarks/bench_resume.py --backbone efficientnet_lite0 --image-size 224
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

from _common import parser


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def backup_seconds(run, state, model, repeats: int = 5) -> tuple[float, int]:
    """Median seconds of one backup of ``model`` with its optimizer, and the backup's size in bytes."""
    from transfer.training import resume

    seconds = []
    for epoch in range(repeats):
        state.epoch = epoch + 1
        started = time.perf_counter()
        resume.save(run, state, model, model.optimizer)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), folder_bytes(run.latest_backup())


def h5_seconds(model, folder: str, repeats: int = 5) -> float:
    """Median seconds of Keras' ``model.save_weights`` to a .weights.h5 file: the baseline."""
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.save_weights(os.path.join(folder, "baseline.weights.h5"))
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def main():
    p = parser(__doc__.split("\n\n")[0])
    p.set_defaults(backbone="efficientnet_lite0", image_size=224)
    args = p.parse_args()
    from transfer import backbones, runs
    from transfer.config import TrainConfig
    from transfer.heads import build_model, freeze_backbone, unfreeze_top
    from transfer.training import resume
    from transfer.training.phases import compile_model, make_optimizer

    config = TrainConfig(data_dir="x", backbone=args.backbone, image_size=args.image_size, fine_tune_epochs=1)
    spec, config = backbones.resolve(config.validate())
    model = build_model(spec, config, num_classes=2)
    with tempfile.TemporaryDirectory() as work:
        run = runs.RunFolder(work, "bench")
        run.start()
        for phase, optimizer in (("head", config.optimizer), ("fine_tune", config.fine_tune_optimizer)):
            if phase == "head":
                freeze_backbone(model, frozen=spec.pretrained)
            else:
                unfreeze_top(model, config.unfreeze, keep_batchnorm_frozen=spec.pretrained)
            compile_model(model, make_optimizer(optimizer, 1e-3), config)
            model.optimizer.build(model.trainable_variables)
            seconds, size = backup_seconds(run, resume.State(), model)
            baseline = h5_seconds(model, work)
            trainable = sum(int(v.numpy().size) for v in model.trainable_variables)
            print(f"{args.backbone} {args.image_size}px, phase {phase} ({optimizer}, {trainable:,} trainable "
                  f"parameters): backup {seconds * 1000:.0f} ms, {size / 2**20:.1f} MiB; the weights alone "
                  f"through Keras' save_weights (.h5) {baseline * 1000:.0f} ms")


if __name__ == "__main__":
    main()
