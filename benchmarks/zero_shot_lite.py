"""Is the EfficientNet-Lite conversion right? Zero-shot ImageNet classification of real cat and dog photos.

    python benchmarks/zero_shot_lite.py [--variants efficientnet_lite0] [--limit 1000] [--all-choices]

No training: each photo of cats_vs_dogs/validation goes through the converted
ImageNet network (base + its own 1000-way classifier) and counts as "cat" when
ImageNet classes 281-285 (domestic cats) get more probability in total than
classes 151-268 (dogs). A faithful conversion scores about 0.9 or better; a
wrong padding, input scaling or weight layout drops far below. With
``--all-choices`` every input scaling x padding pair is measured, which is how
the defaults in ``transfer/backbones/efficientnet_lite.py`` were chosen. One
JSON line per (variant, scaling, padding) on stdout.
"""

from __future__ import annotations

import json
import os
import time

import _common
import numpy as np

CAT, DOG = range(281, 286), range(151, 269)
SCALINGS = ("lite", "torch", "tf")  # (x - 127) / 128; ImageNet mean/std; [-1, 1]
PADDINGS = ("symmetric", "same")


def main():
    p = _common.parser(__doc__.split("\n")[0])
    p.add_argument("--variants", default="efficientnet_lite0,efficientnet_lite1,efficientnet_lite2")
    p.add_argument("--limit", type=int, default=1000, help="photos of validation/ (both classes alternating)")
    p.add_argument("--all-choices", action="store_true", help="every input scaling and padding, not only the default")
    args = p.parse_args()

    import keras

    from transfer.backbones import efficientnet_lite as lite
    from transfer.data.images import load_image
    from transfer.layers import Preprocess

    paths = _common.image_paths(args.data, "validation", args.limit)
    truth = np.array(["cat" in os.path.basename(os.path.dirname(p)) for p in paths])
    for name in args.variants.split(","):
        variant = lite.VARIANTS[name]
        size = variant.size
        images = np.stack([load_image(p, (size, size)) for p in paths]).astype(np.float32)
        choices = [(s, pad) for s in SCALINGS for pad in PADDINGS] if args.all_choices else [("lite", lite.PADDING)]
        for scaling, padding in choices:
            classifier = lite.imagenet_classifier(variant, padding=padding)
            inputs = keras.Input((size, size, 3))
            model = keras.Model(inputs, classifier(Preprocess(scaling)(inputs)))
            start = time.perf_counter()
            probs = model.predict(images, batch_size=args.batch_size, verbose=0)
            seconds = time.perf_counter() - start
            is_cat = probs[:, list(CAT)].sum(1) > probs[:, list(DOG)].sum(1)
            print(json.dumps({"variant": name, "scaling": scaling, "padding": padding, "images": len(paths),
                              "accuracy": round(float(np.mean(is_cat == truth)), 4),
                              "cat_or_dog_mass": round(float(np.mean(probs[:, list(CAT) + list(DOG)].sum(1))), 3),
                              "img_per_s": round(len(paths) / seconds, 1)}), flush=True)


if __name__ == "__main__":
    main()
