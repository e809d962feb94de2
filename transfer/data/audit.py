"""The dataset audit: every candidate file is checked once, by content, before any training.

Plain Keras lists files by extension and decodes them only when training
reaches them, so one corrupt file crashes a run part-way through an epoch
without naming the file. Here each file is fully decoded once, in parallel,
with the project's one decoder; the verdicts are cached per dataset (keyed by
path, size and mtime), so scanning an unchanged folder again is near-instant.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass

from ..console import bar
from ..errors import ConfigError, ImageError
from .images import MAX_PIXELS, is_image_name, looks_like_image, not_regular, open_rgb

log = logging.getLogger("transfer")

AUDIT_VERSION = 1
#: names that operating systems and archivers leave behind: never images, never classes
JUNK_NAMES = frozenset({"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini", "$RECYCLE.BIN"})
#: seconds one file's check may take before it is skipped (decoding a 90 MP image takes a few on a slow CPU)
FILE_DEADLINE = 120.0
_TIMED_OUT = "reading it took over"


@dataclass
class FileCheck:
    """The verdict on one file: ``ok`` (used), ``skipped`` (an image we cannot use) or ``ignored`` (not an image)."""

    path: str
    status: str
    reason: str = ""
    format: str = ""
    width: int = 0
    height: int = 0
    digest: str = ""  # sha1 of the bytes, to find exact duplicates
    note: str = ""  # e.g. that only the first frame of an animation is used


def verdict(check: FileCheck) -> dict:
    """A check's fields without its path (which the audit cache and the workers of a cluster key it by)."""
    return {k: v for k, v in asdict(check).items() if k != "path"}


def is_junk(name: str) -> bool:
    """Hidden files, AppleDouble ``._*`` files and OS leftovers: ignored without complaint."""
    return name.startswith(".") or name in JUNK_NAMES


def check_file(path: str, root: str, max_pixels: int = MAX_PIXELS) -> FileCheck:
    """Decide whether ``path`` (under the real path ``root``) is a usable image, and why not."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return FileCheck(path, "skipped", "file name is not valid UTF-8; rename the file")
    if os.path.islink(path) and os.path.exists(path):
        target = os.path.realpath(path)
        if os.path.commonpath([target, root]) != root:
            return FileCheck(path, "skipped", f"symlink to {target}, outside the dataset folder")
    special = not_regular(path)
    if special:  # broken links are images gone missing; FIFOs, sockets and devices are never opened
        return FileCheck(path, "skipped", special)
    if not is_image_name(path) and not _starts_like_image(path):
        return FileCheck(path, "ignored", "not an image file")
    try:
        rgb, info = open_rgb(path, max_pixels)
    except ImageError as error:
        return FileCheck(path, "skipped", str(error))
    note = f"animated ({info.frames} frames): the first frame is used" if info.frames > 1 else ""
    return FileCheck(path, "ok", "", info.format, rgb.width, rgb.height, file_digest(path), note)


def _starts_like_image(path: str) -> bool:
    """Sniff the first bytes; non-blocking, so a file swapped for a FIFO since it was checked cannot hang."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        try:
            return looks_like_image(f.read(16) or b"")
        except OSError:
            return False


def file_digest(path: str, algorithm: str = "sha1") -> str:
    """Hex digest of a file's bytes, read in blocks (images here, weights files in the backbones)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def audit(paths: list[str], root: str, max_pixels: int = MAX_PIXELS, cache_dir: str | None = None,
          progress: bool = False, workers=None) -> list[FileCheck]:
    """Check every path (in parallel), reusing cached verdicts for files whose size and mtime are unchanged.

    ``workers`` (:class:`transfer.training.distribute.Workers`): the workers of
    a cluster, each with its own copy of the dataset; each checks a part of the
    files and every worker gets every verdict (:func:`_shared`).
    """
    root = os.path.realpath(root)
    cache = _Cache(cache_dir, root, max_pixels)
    results: dict[str, FileCheck] = {}
    todo = []
    for path in paths if workers is None else workers.mine(paths):
        hit = cache.get(path)
        if hit:
            results[path] = hit
        else:
            todo.append(path)
    if todo:
        checks = _with_deadline(lambda p: check_file(p, root, max_pixels), todo, min(8, (os.cpu_count() or 1) + 1))
        for check in bar(checks, total=len(todo), desc="checking images", unit="file", enabled=progress):
            results[check.path] = check
            if not check.reason.startswith(_TIMED_OUT):
                cache.put(check)
    if workers is not None:
        results = _shared(results, paths, root, workers, cache)
    cache.save()
    return [results[p] for p in paths]


def _shared(mine: dict[str, FileCheck], paths: list[str], root: str, workers, cache: "_Cache") -> dict[str, FileCheck]:
    """Every worker's verdicts on every worker, after checking that they all list the same files (a worker whose copy
    of the dataset differs would train on another split)."""
    names = [os.path.relpath(p, root) for p in paths]
    listing = hashlib.sha1("\0".join(names).encode("utf-8", "surrogateescape")).hexdigest()
    index = {p: i for i, p in enumerate(paths)}
    verdicts = [[index[p], verdict(c)] for p, c in mine.items()]
    sent = [json.loads(blob) for blob in workers.gather(json.dumps({"listing": listing, "verdicts": verdicts}).encode())]
    differ = [rank for rank, part in enumerate(sent) if part["listing"] != listing]
    if differ:
        raise ConfigError(f"the workers of the cluster do not see the same image files in {root!r} (this worker lists "
                          f"{len(paths)}; workers of rank {differ} list others): give every worker the same copy of "
                          "the dataset.")
    results = {}
    for part in sent:
        for i, fields in part["verdicts"]:
            results[paths[i]] = check = FileCheck(paths[i], **fields)
            if paths[i] not in mine and not check.reason.startswith(_TIMED_OUT):
                cache.put(check)
    log.info("audit shared by %d workers: %d of %d files checked here", workers.count, len(mine), len(paths))
    return results


def _with_deadline(check, paths: list[str], workers: int):
    """Yield ``check(path)`` for every path, checked in parallel, in the order they finish.

    A file whose check takes longer than :data:`FILE_DEADLINE` seconds (a dead
    network mount, a device that never answers) yields a skipped verdict
    instead, and its thread is left behind and replaced: daemon threads, so
    neither the scan nor the exit of the program waits for them, and Ctrl-C
    works throughout. An error in ``check`` itself is raised here.
    """
    todo, done = queue.SimpleQueue(), queue.SimpleQueue()
    for path in dict.fromkeys(paths):
        todo.put(path)
    started: dict[str, float] = {}

    def work():
        while True:
            try:
                path = todo.get_nowait()
            except queue.Empty:
                return
            started[path] = time.monotonic()
            try:
                done.put((path, check(path), None))
            except Exception as error:  # noqa: BLE001 (raised again in the scanning thread)
                done.put((path, None, error))

    def spawn():
        threading.Thread(target=work, daemon=True, name="transfer-audit").start()

    for _ in range(workers):
        spawn()
    pending = set(paths)
    while pending:
        try:
            path, result, error = done.get(timeout=min(1.0, FILE_DEADLINE))
        except queue.Empty:
            path = None
        if path in pending:
            if error is not None:
                raise error
            pending.discard(path)
            yield result
        now = time.monotonic()
        for late in [p for p, t in list(started.items()) if p in pending and now - t > FILE_DEADLINE]:
            pending.discard(late)
            yield FileCheck(late, "skipped", f"{_TIMED_OUT} {FILE_DEADLINE:g} s (a dead network mount or a device?)")
            spawn()


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/transfer`` (``~/.cache/transfer``): caches that can be deleted at any time."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "transfer")


class _Cache:
    """Verdicts of one dataset folder, in one JSON file replaced atomically (concurrent runs never see half)."""

    def __init__(self, cache_dir: str | None, root: str, max_pixels: int):
        key = hashlib.sha1(f"{root}\0{max_pixels}\0{AUDIT_VERSION}".encode("utf-8", "surrogateescape")).hexdigest()
        self.path = os.path.join(cache_dir or default_cache_dir(), "audit", f"{key}.json")
        self.entries: dict[str, list] = {}
        self.dirty = False
        try:
            with open(self.path, encoding="utf-8") as f:
                self.entries = json.load(f)
        except (OSError, ValueError):
            pass

    @staticmethod
    def _stamp(path: str) -> list | None:
        try:
            st = os.lstat(path)
            target = os.stat(path) if os.path.islink(path) else st
        except OSError:
            return None
        return [st.st_size, st.st_mtime_ns, target.st_size, target.st_mtime_ns]

    def get(self, path: str) -> FileCheck | None:
        entry = self.entries.get(path)
        if entry and entry[0] == self._stamp(path):
            return FileCheck(path, **entry[1])
        return None

    def put(self, check: FileCheck) -> None:
        stamp = self._stamp(check.path)
        if stamp is None or check.reason.startswith("file name"):
            return
        self.entries[check.path] = [stamp, verdict(check)]
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self.entries, f)
            os.replace(tmp, self.path)
        except OSError as error:  # a cache that cannot be written only costs time
            log.warning("could not write the audit cache %s: %s", self.path, error)
