"""Figures that ``explain`` and ``visualize`` write: their output folder, unique file names, image grids.

Neither command ever replaces a file: the output folder must be new, empty,
or one that transfer made (it carries :data:`MARKER_FILE`), and inside it a
name already taken gets a number (``cat-gradcam-2.png``). matplotlib is
imported here only, with the Agg backend.
"""

from __future__ import annotations

import math
import os

import numpy as np

from .. import runs
from ..errors import RunError

MARKER_FILE = ".transfer-output"


def default_folder(command: str, model_path: str) -> str:
    """``./<command>-<run name>``: the run folder's name, or the ``.keras`` file's (its run folder's if in one)."""
    path = os.path.abspath(model_path)
    if os.path.isfile(path):
        folder = os.path.dirname(path)
        path = folder if runs.is_run_folder(folder) else os.path.splitext(path)[0]
    return f"{command}-{os.path.basename(path.rstrip(os.sep))}"


def check_folder(folder: str, option: str = "--output") -> None:
    """Refuse, before any work, a folder that holds files transfer did not write there (or a file, or no access)."""
    runs.check_writable(folder, option)
    if os.path.isdir(folder) and os.listdir(folder) and not os.path.isfile(os.path.join(folder, MARKER_FILE)):
        raise RunError(f"{option} {folder!r} already holds files that transfer did not write; choose a new or empty "
                       f"folder with {option} (transfer never writes among your files).")


def make_folder(folder: str, option: str = "--output") -> str:
    """Create (or reuse one of our) output folders, marked as transfer's."""
    check_folder(folder, option)
    runs.make_dirs(folder, option)
    marker = os.path.join(folder, MARKER_FILE)
    if not os.path.exists(marker):
        runs.write_json(marker, {"tool": "transfer", "contents": "figures of transfer explain / visualize"})
    return folder


def new_file(folder: str, stem: str):
    """Open ``folder/stem.png`` for writing, or ``stem-2.png``, ``stem-3.png``... : never an existing file."""
    for n in range(1, 10_000):
        path = os.path.join(folder, f"{stem}.png" if n == 1 else f"{stem}-{n}.png")
        try:
            return open(path, "xb")
        except FileExistsError:
            continue
    raise RunError(f"{folder!r} holds 10000 files named {stem}*.png; choose another --output.")


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def colormap(values: np.ndarray, name: str = "jet") -> np.ndarray:
    """Values in [0, 1] as uint8 RGB colours of a matplotlib colormap."""
    import matplotlib

    return (matplotlib.colormaps[name](values)[..., :3] * 255).astype(np.uint8)


def save_array(array: np.ndarray, folder: str, stem: str) -> str:
    """An RGB uint8 array as a PNG under a new name; its path."""
    from PIL import Image

    with new_file(folder, stem) as f:
        Image.fromarray(array).save(f, format="PNG")
        return f.name


def save_grid(tiles: list[np.ndarray], titles: list[str], folder: str, stem: str, heading: str = "",
              cmap: str | None = None, columns: int | None = None) -> str:
    """Tiles (RGB arrays, or 2-D arrays drawn with ``cmap``) in a grid with a title above each; the PNG's path."""
    plt = pyplot()
    columns = columns or min(len(tiles), max(1, math.ceil(math.sqrt(len(tiles)))))
    rows = math.ceil(len(tiles) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.6 * rows + (0.4 if heading else 0)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, tile, title in zip(axes.flat, tiles, titles):
        ax.imshow(tile, cmap=cmap, interpolation="nearest")
        ax.set_title(title, fontsize=7)
    if heading:
        fig.suptitle(heading, fontsize=10)
    fig.tight_layout()
    with new_file(folder, stem) as f:
        fig.savefig(f, format="png", dpi=100)
        plt.close(fig)
        return f.name
