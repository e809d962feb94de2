"""Generate the demo dataset: photos-like images of circles, squares and triangles.

Each image has a random background colour, noise, and one shape of random
colour, size and position, so a classifier has to learn shape, not colour.
Writes ``OUT/<class>/<n>.jpg`` (one folder per class, the layout `transfer
train` expects)::

    python datasets/shapes.py datasets/shapes --per-class 100
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle")


def draw(shape: str, rng: np.random.Generator, size: int = 96) -> Image.Image:
    background = tuple(int(v) for v in rng.integers(0, 256, 3))
    image = Image.new("RGB", (size, size), background)
    pen = ImageDraw.Draw(image)
    r = rng.uniform(0.18, 0.38) * size
    cx, cy = rng.uniform(r, size - r, 2)
    colour = tuple(int(v) for v in (np.array(background) + rng.integers(80, 176, 3)) % 256)
    if shape == "circle":
        pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "square":
        pen.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    else:
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    noise = rng.normal(0, 8, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(image, np.float64) + noise, 0, 255).astype(np.uint8))


def generate(out: str, per_class: int = 100, seed: int = 0, size: int = 96) -> None:
    rng = np.random.default_rng(seed)
    for shape in CLASSES:
        os.makedirs(os.path.join(out, shape), exist_ok=True)
        for i in range(per_class):
            draw(shape, rng, size).save(os.path.join(out, shape, f"{i:04d}.jpg"), quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="output folder")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=96)
    args = parser.parse_args()
    generate(args.out, args.per_class, args.seed, args.size)
    print(f"wrote {args.per_class * len(CLASSES)} images to {args.out}")


if __name__ == "__main__":
    main()
