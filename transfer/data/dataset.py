"""What a scanned DATA_DIR is (its classes, the examples of each split, the audit's report) and how it is
shown and written: the summary, skipped.csv, the skip policy."""

from __future__ import annotations

import collections
import csv
import functools
import os
from dataclasses import dataclass, field

from ..errors import DataError
from .audit import FileCheck

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
