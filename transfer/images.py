"""Decoding one image file into the pixels a model sees.

This is the only decoder in the project: training, evaluation and prediction
all call :func:`load_image`, so a model never sees pixels at prediction time
that differ from the ones it was trained on. Pillow is used rather than
``tf.io.decode_image`` because it decodes by content (not extension), applies
EXIF orientation and handles palette, CMYK, 16-bit and alpha images.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps

from .errors import ImageError

#: extensions looked at when scanning folders (case-insensitive); explicit files are tried whatever their name
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
#: transparent pixels are composited onto this colour, so an RGBA image trains as what a person sees
BACKGROUND = (255, 255, 255)
#: larger images are refused from their header, before any decoding (decompression bombs)
MAX_PIXELS = 90_000_000


def is_image_name(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def load_image(path: str, size: tuple[int, int], resize: str = "squash") -> np.ndarray:
    """Decode ``path`` to a ``(height, width, 3)`` uint8 RGB array of ``size``.

    ``resize="squash"`` stretches to the size (Keras' default); ``"crop"`` keeps
    the aspect ratio and centre-crops. Raises :class:`ImageError` with a reason
    a user understands when the file cannot be used.
    """
    height, width = size
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_PIXELS:
                raise ImageError(f"too large ({image.width}x{image.height} pixels, limit {MAX_PIXELS})")
            image.seek(0)
            rgb = _to_rgb(ImageOps.exif_transpose(image))
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except Image.UnidentifiedImageError:
        raise ImageError("not an image, or a format Pillow cannot read") from None
    except Image.DecompressionBombError as error:
        raise ImageError(f"too large ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"corrupt or truncated image ({error})") from None
    if resize == "crop":
        rgb = ImageOps.fit(rgb, (width, height), Image.BILINEAR)
    else:
        rgb = rgb.resize((width, height), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB, alpha composited onto :data:`BACKGROUND`; 16-bit images scaled, not clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(array / 257.0, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
