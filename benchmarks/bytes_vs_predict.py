"""The SavedModel's in-graph decoding (image bytes in) against `transfer predict` (Pillow, EXIF orientation) on photos.

Trains an EfficientNet-Lite0 head on N training photos per class, exports it,
then feeds M validation photos both ways: their file bytes to the
``serving_default`` signature, and their paths to `transfer predict`. Prints
the top-1 agreement, the largest and mean |Δp|, how many photos carry an EXIF
orientation other than 1 (which Pillow applies and the graph cannot), and the
largest |Δp| among those. The shared photos carry none, so ``--exif-demo N``
also writes N of them sideways with EXIF orientation 6 (what a phone held
upright saves) and compares both ways on those: what a client that does not
rotate by EXIF before sending gets.

    python benchmarks/bytes_vs_predict.py --images 1000
    python benchmarks/bytes_vs_predict.py --images 1000 --resize crop
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from _common import image_paths, parser, subset, timed

ORIENTATION = 0x0112  # the EXIF tag


def orientation(path: str) -> int:
    from PIL import Image

    with Image.open(path) as image:
        return int(image.getexif().get(ORIENTATION, 1))


def sideways(paths: list[str], folder: str) -> list[str]:
    """Copies stored rotated 90° with EXIF orientation 6, so that Pillow's exif_transpose shows them upright."""
    from PIL import Image

    copies = []
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            exif = image.getexif()
            exif[ORIENTATION] = 6
            copies.append(os.path.join(folder, f"{i:04d}.jpg"))
            image.transpose(Image.Transpose.ROTATE_90).save(copies[-1], quality=95, exif=exif)
    return copies


def compare(expected: np.ndarray, got: np.ndarray) -> str:
    diff = np.abs(got - expected).max(axis=1)
    top1 = np.mean(got.argmax(1) == expected.argmax(1))
    return (f"top-1 agreement {top1:.2%} ({int(round((1 - top1) * len(got)))} differ) | max |Δp| {diff.max():.4f}, "
            f"mean {diff.mean():.5f}, 99th percentile {np.percentile(diff, 99):.4f}")


def from_bytes(version_dir: str, paths: list[str], batch_size: int) -> np.ndarray:
    """Probabilities of the serving_default signature on the files' bytes, in batches."""
    import tensorflow as tf

    serve = tf.saved_model.load(version_dir).signatures["serving_default"]
    parts = []
    for i in range(0, len(paths), batch_size):
        files = [open(p, "rb").read() for p in paths[i:i + batch_size]]
        parts.append(serve(image_bytes=tf.constant(files))["probabilities"].numpy())
    return np.concatenate(parts)


def from_predict(run: str, paths: list[str], labels: list[str], batch_size: int) -> np.ndarray:
    """Probabilities of `transfer predict` (every class, in label order)."""
    from transfer.prediction import predict

    result = predict(run, paths, top_k=len(labels), batch_size=batch_size)
    assert not result.failures, result.failures[:3]
    rows = {p.path: dict(p.top_k) for p in result.predictions}
    return np.array([[rows[path][label] for label in labels] for path in paths])


def main():
    p = parser(__doc__.split("\n\n")[0])
    p.set_defaults(backbone="efficientnet_lite0", image_size=224)
    p.add_argument("--train-images", type=int, default=100, help="training photos per class")
    p.add_argument("--images", type=int, default=1000, help="validation photos compared")
    p.add_argument("--resize", choices=["squash", "crop"], default="squash")
    p.add_argument("--exif-demo", type=int, default=0, help="also compare on N photos saved sideways, EXIF 6")
    args = p.parse_args()
    from transfer import TrainConfig, export, train

    paths = image_paths(args.data, "validation", args.images)
    rotated = [path for path in paths if orientation(path) != 1]
    with subset(args.data, {"train": args.train_images}) as data, tempfile.TemporaryDirectory() as work:
        result = train(TrainConfig(data_dir=os.path.join(data, "train"), backbone=args.backbone,
                                   image_size=args.image_size, resize=args.resize, batch_size=args.batch_size,
                                   output_dir=work, name="run", verbose=0))
        exported = export(result.run_dir, output=os.path.join(work, "serving"))
        expected, predict_s = timed(from_predict, result.run_dir, paths, result.labels, args.batch_size)
        got, bytes_s = timed(from_bytes, exported.path, paths, args.batch_size)
        demo = ""
        if args.exif_demo:
            turned = sideways(paths[:args.exif_demo], work)
            upright = from_predict(result.run_dir, turned, result.labels, args.batch_size)
            demo = (f"\nbytes_vs_predict the first {len(turned)} saved sideways with EXIF orientation 6, sent "
                    f"unrotated: {compare(upright, from_bytes(exported.path, turned, args.batch_size))}")
    on_rotated = max((np.abs(got - expected)[paths.index(path)].max() for path in rotated), default=0.0)
    print(f"bytes_vs_predict {args.backbone} {args.image_size}px --resize {args.resize}, {len(paths)} validation "
          f"photos: {compare(expected, got)} | EXIF orientation != 1: {len(rotated)} photos (max |Δp| among them "
          f"{on_rotated:.4f}) | export check on {exported.images} photos: bytes top-1 "
          f"{exported.bytes_top1_agreement:.1%} | transfer predict {len(paths) / predict_s:.1f} img/s, "
          f"serving_default {len(paths) / bytes_s:.1f} img/s{demo}")


if __name__ == "__main__":
    main()
