"""Finding the images and classes in DATA_DIR, checked by the audit, as a :class:`~.dataset.Dataset`.

Expected layouts (class names are folder names, sorted)::

    photos/                      photos/
      cats/  a.jpg ...             train/ cats/ dogs/
      dogs/  b.png ...             val/   cats/ dogs/     (or validation/)
                                   test/  cats/ dogs/     (optional)

Without ``val/`` a stratified, seeded split is made (:mod:`.splits`).
"""

from __future__ import annotations

import csv
import logging
import os

from .. import runs
from ..config import check_setting
from ..errors import ConfigError, DataError
from . import audit
from .audit import default_cache_dir, is_junk
from .dataset import SPLIT_FOLDERS, SPLIT_ORDER, AuditReport, Dataset, Example, display_path
from .images import MAX_PIXELS, is_image_name
from .splits import make_splits

log = logging.getLogger("transfer")


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
    splits, source = make_splits(usable, classes, split_dirs, val_split, seed)
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
