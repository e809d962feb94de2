"""The one guard of every folder that transfer writes into: never into a dataset, never into another run.

A file written inside a dataset becomes an image of a class at the next scan
(heat maps learned as a class), or makes the scan fail; a file written into a
run folder makes that run one that ``--overwrite`` may no longer replace. So
every command that writes (``train -o``, ``evaluate -o``, ``export -o``,
``explain -o``, ``visualize -o``) refuses, before any work, an output folder
that is, or is inside:

- a dataset it was given (DATA_DIR, ``--data``, a folder of inputs), or the
  DATA_DIR that the model's run recorded in its config.json;
- any folder whose layout a scan would read as a dataset: class folders of
  images (or ``train/`` holding them) :func:`looks_like_dataset`;
- a run folder of transfer, unless it is one of the places of the model's own
  run meant for it (``RUN/export``, ``RUN/evaluations``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from itertools import islice

from .reports import figures
from . import runs
from .data.audit import is_junk
from .data import SPLIT_FOLDERS
from .errors import RunError
from .data.images import is_image_name

#: entries of a subfolder looked at to decide whether it holds images: a class folder's are nearly all images
PEEK = 50


def check_output(folder: str, option: str, *, datasets: Iterable[str | None] = (), run: str | None = None,
                 own: Iterable[str] = ()) -> None:
    """Refuse ``folder`` (the output of ``option``; it need not exist) when it is or is inside a dataset or a run.

    ``datasets``: the dataset folders the command was given; ``run``: the run
    folder of the model, whose recorded DATA_DIR counts as given; ``own``:
    folders of that run where this output is meant to go.
    """
    real = os.path.realpath(folder)
    for data in [*datasets, _recorded_data(run)]:
        if data and os.path.isdir(data) and runs.within(real, os.path.realpath(data)):
            raise RunError(f"{option} {folder!r} is {_where(real, data)}the dataset folder {data!r}, where the "
                           f"next scan would take what is written for images of a class; choose an {option} "
                           "outside the dataset.")
    allowed = [os.path.realpath(path) for path in own]
    toward = None
    for ancestor in _existing_ancestors(real):
        if looks_like_dataset(ancestor, toward):
            raise RunError(f"{option} {folder!r} is {_where(real, ancestor)}{ancestor!r}, which holds class folders "
                           "of images: a dataset, where the next scan would take what is written for images of a "
                           f"class; choose an {option} outside it.")
        if runs.holds_run(ancestor) and not any(runs.within(real, path) for path in allowed):
            raise RunError(f"{option} {folder!r} is {_where(real, ancestor)}the run folder {ancestor!r}, which "
                           f"must hold only what its run wrote; choose an {option} outside it.")
        toward = ancestor


def looks_like_dataset(folder: str, toward: str | None = None) -> bool:
    """Whether a scan would read ``folder`` as a dataset: visible subfolders that are all class folders holding
    images, or split folders of them (two at least, or ``train/`` alone). ``toward``: the subfolder on the way to the
    output, which counts only if it holds images already (the output may be inside a class folder)."""
    try:
        subfolders = [e.path for e in os.scandir(folder) if not is_junk(e.name) and e.is_dir() and not _ours(e.path)]
    except OSError:
        return False
    if toward is not None and toward in subfolders and not _holds_images(toward):
        subfolders.remove(toward)
    classes = [path for path in subfolders if _holds_images(path) or _is_split(path)]
    if not classes or len(classes) < len(subfolders):
        return False
    return len(classes) >= 2 or os.path.basename(classes[0]).lower() == "train"


def _holds_images(folder: str) -> bool:
    """Whether ``folder`` holds an image file among its first entries (not a run folder of transfer)."""
    try:
        with os.scandir(folder) as entries:
            found = any(e.is_file() and not is_junk(e.name) and is_image_name(e.name) for e in islice(entries, PEEK))
    except OSError:
        return False
    return found


def _ours(folder: str) -> bool:
    """A folder that transfer wrote (a run, an evaluation, figures): its images are outputs, not a class."""
    return runs.holds_run(folder) or any(os.path.isfile(os.path.join(folder, marker))
                                         for marker in (runs.EVALUATION_MARKER, figures.MARKER_FILE))


def _is_split(folder: str) -> bool:
    """A split folder (train/, val/, test/) of class folders of images."""
    if os.path.basename(folder).lower() not in SPLIT_FOLDERS:
        return False
    try:
        classes = [e.path for e in os.scandir(folder) if not is_junk(e.name) and e.is_dir()]
    except OSError:
        return False
    return bool(classes) and all(_holds_images(path) for path in classes)


def _existing_ancestors(real: str):
    """``real`` if it exists, then each of its parents up to the root, nearest first."""
    path = real
    while True:
        if os.path.isdir(path):
            yield path
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


def run_of(model: str) -> str | None:
    """The run folder a model comes from: the run folder itself, or the one holding its ``.keras`` file."""
    if runs.is_run_folder(model):
        return model
    folder = os.path.dirname(os.path.abspath(model))
    return folder if os.path.isfile(model) and runs.is_run_folder(folder) else None


def _recorded_data(run: str | None) -> str | None:
    """The DATA_DIR that the run folder ``run`` recorded in its config.json (None when there is none)."""
    if run is None or not runs.is_run_folder(run):
        return None
    try:
        root = runs.load_run(run).record.get("data", {}).get("root")
    except RunError:
        return None
    return root if isinstance(root, str) else None


def _where(real: str, folder: str) -> str:
    return "" if real == os.path.realpath(folder) else "inside "
