"""The dataset: finding images and classes, splitting them, and feeding them to Keras.

Expected layouts (class names are folder names, sorted)::

    photos/                      photos/
      cats/  a.jpg ...             train/ cats/ dogs/
      dogs/  b.png ...             val/   cats/ dogs/     (or validation/)
                                   test/  cats/ dogs/     (optional)

Without ``val/`` a stratified, seeded split is made; either way the split is
written to the run folder (``split.csv``) so a run can be reproduced exactly.
"""

from __future__ import annotations

import collections
import csv
import functools
import logging
import os
from dataclasses import dataclass, field

import numpy as np

from .. import runs
from ..config import check_setting, parse_memory
from ..errors import ConfigError, DataError
from . import audit
from .audit import FileCheck, default_cache_dir, is_junk
from .images import MAX_PIXELS, is_image_name, load_image

log = logging.getLogger("transfer")

SPLIT_FOLDERS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
SPLIT_ORDER = ("train", "val", "test")


@dataclass
class Example:
    path: str
    label: int


@dataclass
class AuditReport:
    """What the audit found besides the usable images: every problem, with its file."""

    checks: list[FileCheck] = field(default_factory=list)  # every candidate file in a class folder
    unused: list[str] = field(default_factory=list)  # images outside any class folder
    duplicates: list[list[str]] = field(default_factory=list)  # groups of identical files that are used
    leaks: list[list[str]] = field(default_factory=list)  # the groups that span more than one split
    dropped: list[str] = field(default_factory=list)  # copies removed by --dedupe
    excluded: list[str] = field(default_factory=list)  # left out by --exclude
    junk: int = 0  # hidden files, ._* AppleDouble files, __MACOSX/, .DS_Store ...: ignored, but counted

    @property
    def skipped(self) -> list[FileCheck]:
        return [c for c in self.checks if c.status == "skipped"]

    @property
    def ignored(self) -> int:
        return sum(c.status == "ignored" for c in self.checks)

    @property
    def used(self) -> list[FileCheck]:
        dropped = set(self.dropped)
        return [c for c in self.checks if c.status == "ok" and c.path not in dropped]


@dataclass
class Dataset:
    """What was found in DATA_DIR: class names, the examples of each split, and the audit."""

    root: str
    classes: list[str]
    splits: dict[str, list[Example]] = field(default_factory=dict)
    split_source: str = "folders"  # or "random": made here with --val-split and --seed
    report: AuditReport = field(default_factory=AuditReport)

    def counts(self) -> dict[str, dict[str, int]]:
        return {split: {c: sum(e.label == i for e in examples) for i, c in enumerate(self.classes)}
                for split, examples in self.splits.items()}


def scan(data_dir: str, val_split: float = 0.2, seed: int = 42, *, max_pixels: int = MAX_PIXELS,
         dedupe: bool = False, cache_dir: str | None = None, progress: bool = False, workers=None,
         exclude: tuple[str, ...] = ()) -> Dataset:
    """Find, audit and split the images of ``data_dir``; errors name the folder at fault. ``workers``: a cluster's,
    which share the audit (:func:`transfer.data.audit.audit`). ``exclude``: files (relative to ``data_dir``) to leave
    out, each of which must be one of its images."""
    data_dir = os.fspath(data_dir) if isinstance(data_dir, os.PathLike) else data_dir
    for name, value in (("data_dir", data_dir), ("val_split", val_split), ("seed", seed), ("max_pixels", max_pixels)):
        check_setting(name, value)
    root, real_root, split_dirs = check_layout(data_dir)
    check_cache_dir(cache_dir, root)
    junk: list[str] = []
    layout = {split: _list_classes(folder, real_root, junk) for split, folder in split_dirs.items()}
    report = AuditReport(unused=[p for folder in dict.fromkeys([root, *split_dirs.values()])
                                 for p in _loose_images(folder)], junk=len(junk))
    report.excluded = _exclude(layout, root, exclude)
    candidates = [p for classes in layout.values() for paths in classes.values() for p in paths]
    report.checks = audit.audit(candidates, root, max_pixels, cache_dir, progress, workers)
    usable = _usable(layout, split_dirs, report, dedupe)
    classes = list(usable.get("train", usable.get("all")))
    _check_classes(split_dirs.get("train", root), classes)
    splits, source = _make_splits(usable, classes, split_dirs, val_split, seed)
    where = {e.path: split for split, examples in splits.items() for e in examples}
    report.leaks = [group for group in report.duplicates if len({where[p] for p in group if p in where}) > 1]
    _log_report(root, report, candidates, split_dirs)
    return Dataset(root, classes, splits, source, report)


def _exclude(layout: dict[str, dict[str, list[str]]], root: str, exclude: tuple[str, ...]) -> list[str]:
    """Take the listed files out of ``layout`` (in place) before the audit reads them; the paths left out. A listed
    path that is none of the folder's images is an error naming it: a list made for another folder."""
    if not exclude:
        return []
    wanted = {os.path.normpath(p) for p in exclude}
    found = []
    for classes in layout.values():
        for name, paths in classes.items():
            keep = [p for p in paths if os.path.normpath(os.path.relpath(p, root)) not in wanted]
            found += [p for p in paths if p not in keep]
            classes[name] = keep
    unknown = sorted(wanted - {os.path.normpath(os.path.relpath(p, root)) for p in found})
    if unknown:
        shown = ", ".join(map(repr, unknown[:3])) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        raise ConfigError(f"--exclude lists {len(unknown)} file(s) that are not images in class folders of {root!r}: "
                          f"{shown}. Paths are relative to DATA_DIR, as transfer doctor writes them; check the list "
                          "was made for this folder.")
    log.info("left out %d file(s) listed by --exclude", len(found))
    return found


def read_path_list(path: str) -> tuple[str, ...]:
    """The paths in a file for ``--exclude``: a CSV with a ``path`` column (what ``transfer doctor`` writes), or
    one path a line."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"--exclude {path!r} cannot be read ({error}); give a CSV file with a 'path' column, or "
                          "a text file with one path a line.") from None
    if "path" in next(csv.reader(lines[:1]), []):
        lines = [row["path"] or "" for row in csv.DictReader(lines)]
    return tuple(dict.fromkeys(_uncell(p.strip()) for p in lines if p.strip()))


def _uncell(text: str) -> str:
    """A path as written before :func:`csv_cell` guarded it against spreadsheets."""
    return text[1:] if text[:1] == "'" and text[1:2] in ("=", "+", "-", "@", "\t", "\r") else text


def scan_labeled(data_dir: str, split: str | None = None, *, max_pixels: int = MAX_PIXELS,
                 cache_dir: str | None = None, progress: bool = False) -> Dataset:
    """Every usable image of one labeled folder, for evaluation: ``data_dir``'s class folders, or those of one of
    its split folders (``split``; by default test/, else val/, else train/), through the same audit as :func:`scan`.

    The dataset has one split, named after the folder used (``all`` for class folders at the top).
    """
    root, real_root, split_dirs = check_layout(data_dir)
    check_cache_dir(cache_dir, root)
    name = pick_split(root, split_dirs, split)
    junk: list[str] = []
    layout = {name: _list_classes(split_dirs[name], real_root, junk)}
    if not layout[name]:
        raise DataError(f"{split_dirs[name]!r} has no class folders; put the images in one folder per class.")
    report = AuditReport(unused=_loose_images(split_dirs[name]), junk=len(junk))
    candidates = [p for paths in layout[name].values() for p in paths]
    report.checks = audit.audit(candidates, root, max_pixels, cache_dir, progress)
    usable = _usable(layout, split_dirs, report, dedupe=False)[name]
    classes = list(usable)
    examples = [Example(p, i) for i, c in enumerate(classes) for p in usable[c]]
    _log_report(root, report, candidates, split_dirs)
    return Dataset(root, classes, {name: examples}, "folders", report)


def class_folders(folder: str, root: str) -> list[str]:
    """The class names in ``folder`` (DATA_DIR or one of its split folders), sorted, before any file is read."""
    return _subfolders(folder, os.path.realpath(root))


def pick_split(root: str, split_dirs: dict[str, str], split: str | None) -> str:
    """The split that ``--split`` names (train, val/validation, test), or the default: test, val, train."""
    if split is None:
        return next(s for s in ("all", "test", "val", "train") if s in split_dirs)
    if "all" in split_dirs:
        raise DataError(f"--split {split} was given but {root!r} has no split folders (train/ val/ test/); "
                        "leave --split out to use its class folders.")
    name = SPLIT_FOLDERS.get(split.lower())
    if name not in split_dirs:
        raise DataError(f"--split {split}: {root!r} has no such split folder; it has "
                        f"{_listed([os.path.basename(d) for d in split_dirs.values()])}.")
    return name


def check_layout(data_dir: str) -> tuple[str, str, dict[str, str]]:
    """(root, its real path, split -> folder): the checks of the folders themselves (layout, symlinks, class
    names), which read no file, so that the CLI makes them before the slow TensorFlow import."""
    if not os.path.isdir(data_dir):
        raise DataError(f"dataset folder {data_dir!r} does not exist or is not a folder.")
    root = os.path.abspath(data_dir)
    real_root = os.path.realpath(root)
    split_dirs = _split_dirs(root, _subfolders(root, real_root))
    for folder in split_dirs.values():
        for name in _subfolders(folder, real_root):
            check_class_name(os.path.join(folder, name))
    return root, real_root, split_dirs


def check_cache_dir(cache_dir: str | None, data_dir: str) -> None:
    """The caches may not be written where the scan would read them back as a class (hidden folders are not read)."""
    real_root, real_cache = os.path.realpath(data_dir), os.path.realpath(cache_dir or default_cache_dir())
    if runs.within(real_cache, real_root) and not any(
            is_junk(part) for part in os.path.relpath(real_cache, real_root).split(os.sep)):
        raise DataError(f"--cache-dir {cache_dir!r} is inside the dataset folder {data_dir!r}; choose one outside it.")


def _split_dirs(root: str, folders: list[str]) -> dict[str, str]:
    """Split -> folder: ``train/`` with ``val/`` (or ``validation/``) and ``test/``, or ``{"all": root}``.

    A layout that could be read two ways is an error that names the folders,
    never a guess: split folders without ``train/``, two folders for one split,
    split folders beside other folders. A class that happens to be called
    ``train`` (beside other classes, without ``val/`` or ``test/``) is a class.
    """
    by_split: dict[str, list[str]] = {}
    for folder in folders:
        if folder.lower() in SPLIT_FOLDERS:
            by_split.setdefault(SPLIT_FOLDERS[folder.lower()], []).append(folder)
    others = [folder for folder in folders if folder.lower() not in SPLIT_FOLDERS]
    if not by_split or (list(by_split) == ["train"] and others):
        if by_split:
            log.warning("%s is taken for a class beside %s; for train/ val/ test/ splits, put every class folder "
                        "inside them", _listed(by_split["train"]), _listed(others))
        return {"all": root}
    for split, names in by_split.items():
        if len(names) > 1:
            raise DataError(f"{root!r} has {_listed(names, ' and ')}, two folders for the {split} split; "
                            "merge them into one.")
    named = _listed([f for names in by_split.values() for f in names])
    if "train" not in by_split:
        raise DataError(f"{root!r} has {named} but no train/: put the training images in train/<class>/ beside them "
                        "(or, if these folders are classes, rename them).")
    if others:
        raise DataError(f"{root!r} mixes split folders ({named}) with other folders ({_listed(others)}); "
                        "put the class folders inside the split folders, or use class folders only.")
    return {split: os.path.join(root, names[0]) for split, names in by_split.items()}


def _listed(folders: list[str], sep: str = ", ") -> str:
    return sep.join(f"{folder}/" for folder in folders)


def _subfolders(path: str, real_root: str) -> list[str]:
    """Folders in ``path``, sorted, junk left out; a symlink to a folder counts when it stays inside the dataset.

    A symlink that leads outside the dataset (or to a folder holding itself)
    is an error: a class must never go missing silently, nor come from elsewhere.
    """
    names = []
    for entry in os.scandir(path):
        if is_junk(entry.name) or not entry.is_dir():
            continue
        if entry.is_symlink():
            target = os.path.realpath(entry.path)
            outside = not runs.within(target, real_root)
            if outside or runs.within(os.path.realpath(path), target):
                where = "outside the dataset folder" if outside else "a folder that holds it"
                raise DataError(f"{entry.path!r} is a symlink to {target!r}, {where}; symlinked folders are "
                                "followed only inside the dataset: move or copy that folder in, or remove the link.")
        names.append(entry.name)
    return sorted(names)


def _list_classes(folder: str, real_root: str, junk: list[str]) -> dict[str, list[str]]:
    """Class name -> every non-junk file under its folder, recursively (nested folders belong to the class)."""
    junk += [e.path for e in os.scandir(folder) if is_junk(e.name)]
    classes = {}
    for name in _subfolders(folder, real_root):
        check_class_name(os.path.join(folder, name))
        classes[name] = _files_under(os.path.join(folder, name), junk)
    return classes


def check_class_name(folder: str) -> None:
    """A class name is a label in labels.txt, config.json and every prediction: it must survive as one line."""
    problem = runs.label_problem(os.path.basename(folder))
    if problem:
        shown = os.fsencode(folder).decode("utf-8", "backslashreplace")
        raise DataError(f"class folder {shown!r} cannot be a class: its name {problem}; rename the folder.")


def _files_under(folder: str, junk: list[str]) -> list[str]:
    """Files under ``folder``; junk files and folders are added to ``junk`` (a junk folder counts once).

    Symlinked folders inside a class folder are not followed (they could loop);
    they are returned with the files, so that the audit reports them as skipped.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        junk += [os.path.join(dirpath, n) for n in dirnames + filenames if is_junk(n)]
        if runs.holds_run(dirpath):
            raise DataError(f"{dirpath!r} is a run folder of transfer, not images; move it out of the dataset "
                            "(and use an --output-dir outside it).")
        links = [d for d in dirnames if not is_junk(d) and os.path.islink(os.path.join(dirpath, d))]
        dirnames[:] = sorted(d for d in dirnames if not is_junk(d) and d not in links)
        found += [os.path.join(dirpath, f) for f in sorted(filenames + links) if not is_junk(f)]
    return found


def _loose_images(folder: str) -> list[str]:
    """Image files lying directly in DATA_DIR (or a split folder), outside every class folder."""
    return sorted(e.path for e in os.scandir(folder)
                  if e.is_file() and not is_junk(e.name) and is_image_name(e.name))


def _usable(layout, split_dirs, report: AuditReport, dedupe: bool) -> dict[str, dict[str, list[str]]]:
    """Split -> class -> usable images, after the audit and (with --dedupe) without repeated copies."""
    ok = {c.path: c for c in report.checks if c.status == "ok"}
    by_digest: dict[str, list[str]] = {}
    for split in sorted(layout, key=lambda s: SPLIT_ORDER.index(s) if s in SPLIT_ORDER else -1):
        for paths in layout[split].values():
            for p in paths:
                if p in ok:
                    by_digest.setdefault(ok[p].digest, []).append(p)
    report.duplicates = [group for group in by_digest.values() if len(group) > 1]
    if dedupe:
        report.dropped = [p for group in report.duplicates for p in group[1:]]
    keep = set(ok) - set(report.dropped)
    usable = {split: {c: [p for p in paths if p in keep] for c, paths in classes.items()}
              for split, classes in layout.items()}
    for split, classes in usable.items():
        for name, paths in classes.items():
            if not paths:
                raise DataError(_empty_class_message(os.path.join(split_dirs[split], name), layout[split][name], report))
    return usable


def _empty_class_message(folder: str, files: list[str], report: AuditReport) -> str:
    if not files:
        return f"class folder {folder!r} has no images; add images or remove the folder."
    reasons = sorted({c.reason for c in report.checks if c.path in set(files) and c.reason})
    more = f"; and {len(reasons) - 3} more" if len(reasons) > 3 else ""  # one line, even for thousands of files
    return (f"class folder {folder!r} has no usable images ({len(files)} files: "
            f"{'; '.join(reasons[:3]) or 'duplicates'}{more}); add images or remove the folder.")


def _check_classes(folder: str, classes: list[str]) -> None:
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "none"
        raise DataError(f"{folder!r} needs at least 2 class folders (one per class) with images; found {found}.")


def _make_splits(usable, classes, split_dirs, val_split, seed) -> tuple[dict[str, list[Example]], str]:
    for split, split_classes in usable.items():
        unknown = sorted(set(split_classes) - set(classes))
        if unknown:
            raise DataError(f"{split_dirs[split]!r} has classes that train/ lacks: {', '.join(unknown)}.")
    pool = usable.get("train", usable.get("all"))
    splits = {s: [Example(p, classes.index(c)) for c, paths in usable[s].items() for p in paths]
              for s in ("val", "test") if s in usable}
    if "val" in splits:
        splits["train"] = [Example(p, i) for i, c in enumerate(classes) for p in pool[c]]
        source = "folders"
    else:
        splits["train"], splits["val"] = stratified_split([pool[c] for c in classes], val_split, seed, classes)
        source = "random"
    _check_split_classes(splits, classes, split_dirs)
    return {s: splits[s] for s in SPLIT_ORDER if s in splits}, source


def _check_split_classes(splits: dict[str, list[Example]], classes: list[str], split_dirs: dict[str, str]) -> None:
    """A val/ or test/ folder without images is an error; one that lacks some classes, a warning naming them."""
    for split in ("val", "test"):
        if split not in split_dirs:
            continue
        present = {e.label for e in splits[split]}
        if not present:
            raise DataError(f"{split_dirs[split]!r} has no class folders with images; add them, or remove the folder.")
        missing = [repr(c) for i, c in enumerate(classes) if i not in present]
        if missing:
            log.warning("%s has no images of class %s: %s accuracy is not measured for %s", split_dirs[split],
                        ", ".join(missing), "validation" if split == "val" else "test",
                        "it" if len(missing) == 1 else "them")


def _log_report(root: str, report: AuditReport, candidates: list[str], split_dirs: dict[str, str]) -> None:
    """One warning line per problem file; summaries for everything else."""
    for check in report.skipped:
        log.warning("skipped %s: %s", display_path(check.path, root), check.reason)
    for check in report.used:
        if check.note:
            log.warning("%s: %s", display_path(check.path, root), check.note)
    if report.unused:
        log.warning("%d image(s) outside any class folder are not used: %s", len(report.unused),
                    ", ".join(display_path(p, root) for p in report.unused[:5]))
    nested = sum(os.path.dirname(os.path.dirname(p)) not in split_dirs.values() for p in candidates)
    if nested:
        log.info("%d image(s) in nested subfolders count for their top-level class folder", nested)
    if report.ignored or report.junk:
        log.info("ignored: %d non-image file(s), %d hidden or system file(s)", report.ignored, report.junk)
    if report.leaks:
        log.warning("%d image(s) appear in more than one split (exact copies: leakage); --dedupe drops them",
                    sum(len(g) - 1 for g in report.leaks))
    if report.dropped:
        log.info("--dedupe: dropped %d exact copies", len(report.dropped))


def display_path(path: str, root: str) -> str:
    """The path relative to the dataset, or its repr when it is not printable (undecodable names)."""
    rel = os.path.relpath(path, root)
    return rel if rel.isprintable() and _encodable(rel) else repr(rel)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def check_skips(dataset: Dataset, strict: bool, max_skip_fraction: float) -> None:
    """Stop before training when skipped files are not acceptable (``--strict``, ``--max-skip-fraction``)."""
    skipped = dataset.report.skipped
    if not skipped:
        return
    total = len(skipped) + len(dataset.report.used)
    fraction = len(skipped) / total
    first = "; ".join(f"{display_path(c.path, dataset.root)}: {c.reason}" for c in skipped[:3])
    if strict:
        raise DataError(f"--strict: {len(skipped)} file(s) cannot be used ({first}); fix or remove them "
                        "(`transfer inspect` lists them all).")
    if fraction > max_skip_fraction:
        raise DataError(f"{len(skipped)} of {total} image files ({fraction:.0%}) cannot be used, more than "
                        f"--max-skip-fraction {max_skip_fraction}; fix or remove them (`transfer inspect` lists them "
                        "all) or raise --max-skip-fraction.")


def class_weights(dataset: Dataset, mode: str) -> dict[int, float] | None:
    """Balanced weights (``n / (classes * n_c)``) when ``auto`` and the largest class is over 1.5x the smallest."""
    counts = [sum(e.label == i for e in dataset.splits["train"]) for i in range(len(dataset.classes))]
    if mode == "none" or max(counts) <= 1.5 * min(counts):
        return None
    total = sum(counts)
    weights = {i: total / (len(counts) * n) for i, n in enumerate(counts)}
    log.info("classes are imbalanced (%d to %d images): class weights %s", max(counts), min(counts),
             ", ".join(f"{dataset.classes[i]} {w:.2f}" for i, w in weights.items()))
    return weights


def summary(dataset: Dataset) -> dict:
    """The audit as data: what ``transfer inspect`` prints."""
    report = dataset.report
    used = report.used
    widths = sorted(c.width for c in used)
    heights = sorted(c.height for c in used)
    train = dataset.counts()["train"]
    rel = functools.partial(display_path, root=dataset.root)
    return {
        "root": dataset.root,
        "classes": dataset.classes,
        "split_source": dataset.split_source,
        "counts": dataset.counts(),
        "images": sum(len(v) for v in dataset.splits.values()),
        "imbalance_ratio": round(max(train.values()) / max(1, min(train.values())), 2),
        "formats": dict(collections.Counter(c.format for c in used).most_common()),
        "sizes": {"min": [widths[0], heights[0]], "median": [widths[len(widths) // 2], heights[len(heights) // 2]],
                  "max": [widths[-1], heights[-1]]} if used else None,
        "skipped": [{"path": rel(c.path), "reason": c.reason} for c in report.skipped],
        "notes": [{"path": rel(c.path), "note": c.note} for c in used if c.note],
        "unused": [rel(p) for p in report.unused],
        "ignored": report.ignored,
        "hidden_or_system": report.junk,
        "duplicates": [[rel(p) for p in group] for group in report.duplicates],
        "leaks": [[rel(p) for p in group] for group in report.leaks],
        "dropped": [rel(p) for p in report.dropped],
    }


def write_skipped(dataset: Dataset, path: str) -> None:
    """skipped.csv: every file that was not used, with the reason."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason"])
        for check in dataset.report.skipped:
            writer.writerow(csv_row([display_path(check.path, dataset.root), check.reason]))
        for p in dataset.report.unused:
            writer.writerow(csv_row([display_path(p, dataset.root), "outside any class folder"]))
        for p in dataset.report.dropped:
            writer.writerow(csv_row([display_path(p, dataset.root), "exact copy of another image (--dedupe)"]))


def csv_cell(text: str) -> str:
    """Quote a cell that a spreadsheet would run as a formula (CSV injection)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def csv_row(cells: list) -> list[str]:
    """A row for a CSV that people open in a spreadsheet: every cell as text, each quoted as :func:`csv_cell` says,
    so that no column (a label inside top-k, an error message) is left out."""
    return [csv_cell(str(cell)) for cell in cells]


def stratified_split(per_class: list[list[str]], val_split: float, seed: int,
                     classes: list[str]) -> tuple[list[Example], list[Example]]:
    """Split each class separately so every class gets at least one validation image."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label, paths in enumerate(per_class):
        if len(paths) < 2:
            raise DataError(f"class {classes[label]!r} has {len(paths)} image; at least 2 are needed to "
                            "split off validation images (or provide a val/ folder).")
        order = rng.permutation(len(paths))
        n_val = min(len(paths) - 1, max(1, round(len(paths) * val_split)))
        val += [Example(paths[i], label) for i in sorted(order[:n_val])]
        train += [Example(paths[i], label) for i in sorted(order[n_val:])]
    return train, val


def write_manifest(dataset: Dataset, path: str) -> None:
    """One row per image: its path relative to the dataset root, class and split."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        for split, examples in dataset.splits.items():
            for e in examples:
                writer.writerow([os.path.relpath(e.path, dataset.root), dataset.classes[e.label], split])


def read_manifest(path: str, root: str, classes: list[str]) -> dict[str, list[Example]]:
    """The splits saved by :func:`write_manifest`, for reproducing or evaluating a run."""
    splits: dict[str, list[Example]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            splits.setdefault(row["split"], []).append(Example(os.path.join(root, row["path"]),
                                                               classes.index(row["label"])))
    return splits


def fingerprint(root: str) -> dict[str, list[int]]:
    """Every file under ``root`` (junk left out) -> [size, mtime in ns]: what a resumed run compares its data by.

    A stat per file, no read: cheap next to the audit, so ``--resume`` checks it before anything else.
    """
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not is_junk(d)]
        for name in filenames:
            if is_junk(name):
                continue
            path = os.path.join(dirpath, name)
            try:
                info = os.stat(path)
            except OSError:  # a broken symlink: the audit reports it; here it is a file without a size
                info = None
            found[os.path.relpath(path, root)] = [info.st_size, info.st_mtime_ns] if info else [-1, -1]
    return found


def changes(before: dict[str, list[int]], after: dict[str, list[int]]) -> dict[str, list[str]]:
    """The files added, removed and modified (size or modification time) between two fingerprints, sorted."""
    return {"added": sorted(set(after) - set(before)), "removed": sorted(set(before) - set(after)),
            "modified": sorted(p for p in set(before) & set(after) if list(before[p]) != list(after[p]))}


def make_tf_dataset(examples: list[Example], image_size: int, batch_size: int, *, shuffle: bool = False,
                    seed: int = 0, resize: str = "squash", cache: bool = True, max_pixels: int = MAX_PIXELS):
    """A batched ``tf.data`` pipeline of (float32 pixels 0-255, int label)."""
    images = decoded_images(examples, image_size, resize=resize, cache=cache, max_pixels=max_pixels)
    return batches(images, batch_size, shuffle=shuffle, seed=seed)


def decoded_images(examples: list[Example], image_size: int, *, resize: str = "squash", cache: bool = True,
                   max_pixels: int = MAX_PIXELS, budget: int | None = None):
    """(uint8 image, label) pairs, decoded in parallel.

    When they fit ``budget`` bytes (default :func:`memory_budget`), decoded
    images are cached in memory after the first pass;
    every pipeline :func:`batches` derives from this dataset shares that cache,
    so a new shuffle order (a new phase) decodes nothing again.
    """
    import tensorflow as tf

    size = (image_size, image_size)

    def decode(path):
        return load_image(os.fsdecode(path), size, resize, max_pixels)

    def load(path, label):
        image = tf.numpy_function(decode, [path], tf.uint8, stateful=False)
        image.set_shape((image_size, image_size, 3))
        return image, label

    paths = [os.fsencode(e.path) for e in examples]
    labels = np.array([e.label for e in examples], dtype=np.int32)
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if cache and decoded_bytes(examples, image_size) <= (memory_budget() if budget is None else budget):
        ds = ds.cache()
    return ds


def batches(images, batch_size: int, *, shuffle: bool = False, seed: int = 0):
    """Shuffled (seeded, fresh for each call) float32 batches of :func:`decoded_images`."""
    import tensorflow as tf

    if shuffle:
        ds = images.shuffle(int(images.cardinality()), seed=seed, reshuffle_each_iteration=True)
    else:
        ds = images
    ds = ds.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def decoded_bytes(examples: list[Example], image_size: int) -> int:
    """RAM that the decoded images of ``examples`` take in :func:`decoded_images`' cache."""
    return len(examples) * image_size * image_size * 3


def memory_budget(limit: str = "25%") -> int:
    """Bytes an in-memory cache may use: ``--cache-memory`` (a size, or a percentage of RAM)."""
    return parse_memory(limit)
