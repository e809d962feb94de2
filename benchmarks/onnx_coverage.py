"""Which registry entries `transfer export --format onnx` converts, with the pinned tf2onnx and onnxruntime.

Builds every backbone of ``transfer backbones`` into the classifier `transfer
train` saves (preprocessing, backbone, head; 3 classes; random weights, since
conversion does not depend on them, with ``--tta`` as a second variant), converts
it as the export does and compares onnxruntime with Keras on random images.
Prints a Markdown table for docs/deployment.md: seconds to convert, file size, max abs Δp,
or why it failed.

    python benchmarks/onnx_coverage.py            # every entry at its default size
    python benchmarks/onnx_coverage.py --only smallcnn lenet5
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import _common  # noqa: F401  (puts the repository on the path, quiets TensorFlow)


def try_entry(name: str, tta: bool) -> tuple[str, str]:
    """(outcome, details) of converting one registry entry: "yes" with the size and |Δp|, or "no" and why."""
    from transfer.backbones import registry
    from transfer.config import TrainConfig
    from transfer.errors import TransferError
    from transfer.heads import build_model
    from transfer.export.onnx import convert
    from transfer.runners import ONNXRunner as Runner

    spec, config = registry.resolve(TrainConfig(data_dir=".", backbone=name, weights="none", tta=tta))
    model = build_model(spec, config, 3)
    started = time.perf_counter()
    try:
        content = convert(model, name)
        runner = Runner(content, name)
    except TransferError as error:
        return "no", str(error)
    seconds = time.perf_counter() - started
    size = config.image_size
    images = np.random.default_rng(0).uniform(0, 255, (4, size, size, 3)).astype(np.float32)
    diff = float(np.max(np.abs(runner(images) - model.predict_on_batch(images))))
    return "yes" if diff < 1e-3 else "no", f"{seconds:.0f} s, {len(content) / 2**20:.1f} MiB, max abs Δp {diff:.1g}"


def main() -> None:
    from transfer.backbones import registry

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", default=None, help="registry names (default: all)")
    args = p.parse_args()
    print("| backbone | converts | with --tta | notes (default size, no --tta) |")
    print("| --- | --- | --- | --- |")
    for name in args.only or registry.names():
        outcome, details = try_entry(name, tta=False)
        with_tta, _ = try_entry(name, tta=True)
        print(f"| {name} | {outcome} | {with_tta} | {details} |", flush=True)


if __name__ == "__main__":
    main()
