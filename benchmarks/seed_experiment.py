"""The seed's experiment side by side: the Keras blog's recipes, this product's defaults, the seed's Inception recipe.

The blog is "Building powerful image classification models using very little
data" (Keras, 2016): 2000 training photos of cats and dogs, 800 validation
photos in the blog (1000 here, ``../shared/data/cats_vs_dogs``). Each recipe is
one ``transfer train`` command line, run in a fresh process with a fresh cache
folder (a cold cache: the weights are fetched and converted, the features
computed), and the script prints its validation accuracy and seconds with the
command and the machine's load, because the machine is shared.

Recipes (``--only`` picks a subset; ``--list`` prints the commands):

- ``blog-scratch``: the blog's small convnet at 150 px, augmented, 50 epochs of rmsprop (blog: about 80 %);
- ``blog-bottleneck``: VGG16's bottleneck features at 150 px, flatten, dense 256, dropout 0.5, 50 epochs of
  rmsprop (about 90 %);
- ``blog-finetune``: the same, then block 5 fine-tuned with SGD 1e-4, momentum 0.9 (about 94 %); the blog's
  50 epochs of block 5 are about 100 CPU minutes here, so the run stops at ``--time-limit 20m``;
- ``default-vgg16``, ``default-inceptionv3``: ``transfer train DATA --backbone NAME``, nothing else;
- ``seed-inceptionv3``: GAP, dense 1024 relu, softmax with rmsprop; then the top two inception blocks
  (after ``mixed8``) with SGD 1e-4, momentum 0.9.

The blog's VGG16 weights are Keras' download, which this machine cannot reach:
its recipes use the ImageNet weights from the index (torchvision's VGG16), the
only difference from the blog besides the validation set's size.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "cats_vs_dogs"))
BLOG_HEAD = ["--image-size", "150", "--pooling", "flatten", "--dense", "256", "--dropout", "0.5", "--no-batch-norm",
             "--optimizer", "rmsprop", "--lr", "1e-4", "--epochs", "50"]
RECIPES = {
    "blog-scratch": ["--backbone", "smallcnn", "--image-size", "150", "--augment", "strong", "--epochs", "50",
                     "--optimizer", "rmsprop", "--lr", "1e-3", "--fine-tune-epochs", "0"],
    "blog-bottleneck": ["--backbone", "vgg16", *BLOG_HEAD, "--augment", "none", "--fine-tune-epochs", "0"],
    "blog-finetune": ["--backbone", "vgg16", *BLOG_HEAD, "--augment", "none", "--fine-tune-epochs", "50",
                      "--unfreeze", "after:block4_pool", "--fine-tune-optimizer", "sgd", "--fine-tune-lr", "1e-4",
                      "--time-limit", "20m"],
    "default-vgg16": ["--backbone", "vgg16"],
    "default-inceptionv3": ["--backbone", "inceptionv3"],
    "seed-inceptionv3": ["--backbone", "inceptionv3", "--dense", "1024", "--dropout", "0", "--no-batch-norm",
                         "--optimizer", "rmsprop", "--lr", "1e-3", "--epochs", "10", "--fine-tune-epochs", "10",
                         "--unfreeze", "after:mixed8", "--fine-tune-optimizer", "sgd", "--fine-tune-lr", "1e-4"],
}
BLOG = {"blog-scratch": "about 0.80", "blog-bottleneck": "about 0.90", "blog-finetune": "about 0.94"}


def command(data: str, recipe: str, cache: str, output: str) -> list[str]:
    return [sys.executable, "-m", "cli", "train", data, *RECIPES[recipe], "--cache-dir", cache, "-o", output,
            "--name", recipe, "--overwrite"]


def run(data: str, recipe: str) -> tuple[float | None, float, str]:
    """(validation accuracy, seconds, load average before) of one recipe from a cold cache."""
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="seed-experiment-") as scratch:
        started = time.monotonic()
        done = subprocess.run(command(data, recipe, os.path.join(scratch, "cache"), os.path.join(scratch, "runs")),
                              cwd=ROOT, capture_output=True, text=True)
        seconds = time.monotonic() - started
    found = re.search(r"val accuracy\s+([0-9.]+)", done.stdout + done.stderr)
    if done.returncode != 0 or not found:
        print((done.stdout + done.stderr)[-2000:], file=sys.stderr)
    return (float(found.group(1)) if found else None), seconds, f"{load:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=DEFAULT_DATA, help="cats_vs_dogs with train/ and validation/")
    p.add_argument("--only", nargs="+", choices=list(RECIPES), default=list(RECIPES), help="recipes to run")
    p.add_argument("--list", action="store_true", help="print the commands and run nothing")
    args = p.parse_args()
    for recipe in args.only:
        line = " ".join(["transfer train", os.path.relpath(args.data, ROOT), *RECIPES[recipe]])
        if args.list:
            print(f"{recipe}: {line}")
            continue
        accuracy, seconds, load = run(args.data, recipe)
        shown = f"{accuracy:.4f}" if accuracy is not None else "failed"
        print(f"{recipe:20s} val_acc {shown}  {seconds:7.0f} s  load {load}  blog {BLOG.get(recipe, '-')}  "
              f"| {line}", flush=True)


if __name__ == "__main__":
    main()
