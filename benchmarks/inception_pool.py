"""InceptionV3's last pool branch: max (as in the 2015 release the weights come from) or average (Keras' graph).

Both variants load the same converted weights (the cache of ``transfer weights fetch inceptionv3``); the
features (global average of ``mixed10``) of N training photos per class give two class centroids, and M
validation photos per class are classified by the nearest one (cosine). Prints both accuracies.

    python benchmarks/inception_pool.py --train 50 --val 50
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "cats_vs_dogs"))


def features(model, paths, size):
    import numpy as np

    from transfer.data.images import load_image
    from transfer.layers import Preprocess

    out = []
    for i in range(0, len(paths), 16):
        images = np.stack([load_image(p, (size, size)) for p in paths[i:i + 16]]).astype(np.float32)
        out.append(np.asarray(model.predict_on_batch(Preprocess("inception")(images))).mean(axis=(1, 2)))
    f = np.concatenate(out)
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def main() -> None:
    import numpy as np

    from transfer.backbones import inception_v3

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", type=int, default=50, help="photos per class for the centroids")
    p.add_argument("--val", type=int, default=50, help="validation photos per class to classify")
    args = p.parse_args()
    def pick(split, n):
        return [q for c in ("cats", "dogs") for q in sorted(glob.glob(f"{DATA}/{split}/{c}/*.jpg"))[:n]]

    train, val = pick("train", args.train), pick("validation", args.val)
    y_train, y_val = np.repeat([0, 1], args.train), np.repeat([0, 1], args.val)
    reference = inception_v3.WEIGHTS.build((299, 299, 3), weights="imagenet")
    for pool in ("max", "avg"):
        model = inception_v3.build_base((299, 299, 3), last_pool=pool)
        model.set_weights(reference.get_weights())
        f_train, f_val = features(model, train, 299), features(model, val, 299)
        centroids = np.stack([f_train[y_train == c].mean(0) for c in (0, 1)])
        right = int(np.sum(np.argmax(f_val @ centroids.T, axis=1) == y_val))
        print(f"mixed10 pool {pool}: nearest centroid {right}/{len(val)} = {right / len(val):.3f}", flush=True)


if __name__ == "__main__":
    main()
