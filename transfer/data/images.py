"""Decoding one image file into the pixels a model sees.

This is the only decoder in the project: the dataset audit, training,
evaluation and prediction all go through :func:`open_rgb`, so a model never
sees pixels at prediction time that differ from the ones it was trained on,
and a bad file gets the same reason everywhere. Pillow is used rather than
``tf.io.decode_image`` because it decodes by content (not extension), applies
EXIF orientation and handles palette, CMYK, 16-bit, alpha, TIFF and WebP.

Conversions, documented once: EXIF orientation is applied; transparent pixels
are composited onto :data:`BACKGROUND` (white); 16-bit images are scaled to
8 bits (not clipped); CMYK, palette, grayscale and LA become RGB; animated
images use their first frame.
"""

from __future__ import annotations

import os
import re
import stat
import warnings
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from ..config import default
from ..errors import ImageError

#: extensions looked at when scanning folders (case-insensitive); explicit files are tried whatever their name
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
#: transparent pixels are composited onto this colour, so an RGBA image trains as what a person sees
BACKGROUND = (255, 255, 255)
#: larger images are refused from their header, before any decoding (decompression bombs)
MAX_PIXELS: int = default("max_pixels")
#: the first bytes of the formats above, to recognise images whatever their name
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


@dataclass
class ImageInfo:
    """What decoding learned about a file, for the audit's report."""

    format: str
    width: int
    height: int
    mode: str
    frames: int


def is_image_name(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def looks_like_image(head: bytes) -> bool:
    """True when the file's first bytes are those of a supported format."""
    return head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


_SPECIAL = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
            (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def not_regular(path: str) -> str | None:
    """Why ``path`` is no regular file, which alone is safe to open (opening a FIFO blocks forever); None if it is."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "broken symlink" if os.path.islink(path) else "file not found"
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _SPECIAL if test(mode)), "a special file")
    return f"not a regular file ({kind}{', behind a symlink' if os.path.islink(path) else ''})"


def file_problem(path: str) -> str | None:
    """Reasons a path cannot be read at all, checked before any decoding."""
    problem = not_regular(path)
    if problem is None and os.path.getsize(path) == 0:
        return "empty file"
    return problem


def open_rgb(path: str | BinaryIO, max_pixels: int = MAX_PIXELS) -> tuple[Image.Image, ImageInfo]:
    """Decode ``path`` (or the bytes of an open file: `transfer serve`) fully to an 8-bit RGB image; raise
    :class:`ImageError` with a reason a user understands."""
    problem = file_problem(path) if isinstance(path, (str, bytes, os.PathLike)) else None
    if problem:
        raise ImageError(problem)
    _allow(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is checked below
            with Image.open(path) as image:
                info = ImageInfo(image.format or "?", image.width, image.height, image.mode,
                                 getattr(image, "n_frames", 1))
                if image.width * image.height > max_pixels:
                    raise ImageError(f"too large: {image.width * image.height} pixels ({image.width}x{image.height}), "
                                     f"over the limit of {max_pixels} (--max-pixels)")
                image.seek(0)
                rgb = _to_rgb(ImageOps.exif_transpose(image))
    except ImageError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageError("not an image, or a format Pillow cannot read") from None
    except Image.DecompressionBombError as error:  # Pillow's own limit (2x MAX_IMAGE_PIXELS >= 2x ours) in open()
        pixels = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{pixels.group(1)} pixels" if pixels else "too many pixels"
        raise ImageError(f"too large: {size}, over the limit of {max_pixels} (--max-pixels)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageError(f"corrupt or truncated image ({error})") from None
    return rgb, info


def _allow(max_pixels: int) -> None:
    """Raise Pillow's own limit (``MAX_IMAGE_PIXELS``: it refuses twice that in ``open()``) to ``max_pixels`` when it
    is lower, so that ``--max-pixels`` decides, whatever its value: it only rises, so every caller's limit holds."""
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


def load_image(path: str | BinaryIO, size: tuple[int, int], resize: str = "squash",
               max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode ``path`` to a ``(height, width, 3)`` uint8 RGB array of ``size``.

    ``resize="squash"`` stretches to the size (Keras' default); ``"crop"`` keeps
    the aspect ratio and centre-crops.
    """
    height, width = size
    rgb, _ = open_rgb(path, max_pixels)
    if resize == "crop":
        rgb = ImageOps.fit(rgb, (width, height), Image.BILINEAR)
    elif rgb.size != (width, height):
        rgb = rgb.resize((width, height), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: 16-bit scaled, alpha composited onto :data:`BACKGROUND`, everything else converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.round(array / 257.0), 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def thumbnail_array(path: str, size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The image at most ``size`` pixels on its longer side, for reports; a grey square when it cannot be read."""
    try:
        rgb, _ = open_rgb(path, max_pixels)
    except ImageError:
        return np.full((size, size, 3), 128, np.uint8)
    rgb.thumbnail((size, size))
    return np.asarray(rgb, dtype=np.uint8)
