"""The SavedModel of ``transfer export``: encoded images in, labels out, for TensorFlow Serving.

Two signatures, written with ``keras.export.ExportArchive`` so their names are fixed:

- ``serving_default``: ``image_bytes`` (tf.string [N]: JPEG, PNG, GIF or BMP
  files, what TF Serving's REST API delivers from ``{"b64": ...}``), decoded,
  resized and preprocessed inside the graph;
- ``predict_images``: ``image`` (float32 [N, H, W, 3], RGB 0-255 at the model's size).

Both return ``probabilities`` [N, C], ``classes`` [N, k] (the top-k labels,
k = min(5, C), from a constant inside the graph) and ``scores`` [N, k].

In-graph decoding follows :func:`transfer.data.images.load_image` as closely as
TensorFlow's ops allow: JPEG with the accurate DCT (Pillow's), transparent PNG
pixels composited onto white, bilinear resizing with Pillow's antialiasing
(``ScaleAndTranslate``, the kernel of ``tf.image.resize(antialias=True)``),
over the same centred box for ``--resize crop``, rounded to 8 bits as Pillow's
are. What it cannot do: apply EXIF orientation (the client must rotate first),
read WebP or TIFF, or composite a transparent GIF; BENCHMARKS.md gives the
measured differences.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from dataclasses import dataclass

import numpy as np

from .. import runs
from ..errors import RunError
from ..runners import PIXELS_INPUT, PIXELS_SIGNATURE
from .folders import check_arguments, destination, provenance, write_labels
from .verify import BYTES_TOP1, THRESHOLDS, VERIFY_IMAGES, check_images, compare, in_batches, readable

log = logging.getLogger("transfer")
BYTES_SIGNATURE, BYTES_INPUT = "serving_default", "image_bytes"
OUTPUTS = ("probabilities", "classes", "scores")
TOP_K = 5
#: the first bytes of the formats the graph decodes
MAGIC = {"JPEG": b"\xff\xd8\xff", "PNG": b"\x89PNG\r\n\x1a\n", "GIF": b"GIF8", "BMP": b"BM"}


@dataclass
class ExportResult:
    path: str  # the version folder, DIR/<name>/<version>
    version: int
    labels: list[str]
    images: int  # validation photos the SavedModel and the Keras model were compared on
    top1_agreement: float  # predict_images (the same pixels) against Keras
    max_abs_diff: float  # of predict_images' probabilities from Keras'
    bytes_top1_agreement: float  # serving_default (the files' bytes, decoded in the graph) against transfer predict
    bytes_max_abs_diff: float
    size: int  # bytes of the version folder
    checked_on: str = ""  # where the images came from: the run's validation images, or --data

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def summary(self) -> str:
        """One line for the terminal: where it went and how well both signatures agreed."""
        return (f"exported: {self.path} ({self.size / 2**20:.2f} MiB); on {self.images} images of {self.checked_on}: "
                f"pixels top-1 agreement with the Keras model {self.top1_agreement:.1%}, max |Δp| "
                f"{self.max_abs_diff:.2g}; image bytes decoded in the graph, top-1 agreement with predict "
                f"{self.bytes_top1_agreement:.1%}, max |Δp| {self.bytes_max_abs_diff:.2g}")


def export(model_path: str, output: str | None = None, name: str | None = None,
           version: int | None = None, data: str | None = None, unsafe: bool = False) -> ExportResult:
    """Export a run folder (or ``.keras`` file) as a SavedModel for TensorFlow Serving, checked on real photos.

    The check runs on the run's validation photos (split.csv), or on the images under ``data``.
    ``unsafe``: load a ``.keras`` file outside Keras' safe mode (see :func:`transfer.runners.load_model`).
    """
    output, name, data = check_arguments(output, name, version, data)
    loaded, source, base = destination(model_path, output, name, data, unsafe)
    version = version or _next_version(base)
    target = os.path.join(base, str(version))
    if os.path.exists(target):
        raise RunError(f"{target!r} already exists; choose another --version.")
    run = runs.load_run(source) if runs.is_run_folder(source) else None
    checked_on, candidates = check_images(run, data)
    paths, images = readable(loaded, candidates, VERIFY_IMAGES, "validation")
    staging = os.path.join(base, f".{version}.partial-{uuid.uuid4().hex[:12]}")  # a name nobody else uses
    runs.make_dirs(staging, "--output")
    try:
        log.info("writing the SavedModel")
        write(loaded.keras_model, staging, loaded.labels, loaded.resize)
        result = verify_saved_model(loaded, staging, paths, images)
        result.path, result.version, result.checked_on = target, version, checked_on
        _write_extras(staging, loaded, run, result)
        result.size = _folder_size(staging)
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_labels(base, loaded.labels)
    return result


def _next_version(base: str) -> int:
    versions = [int(d) for d in os.listdir(base) if d.isdigit()] if os.path.isdir(base) else []
    return max(versions, default=0) + 1


def _write_extras(path: str, loaded, run, result: ExportResult) -> None:
    """assets.extra/ of the SavedModel: labels.txt, metadata.json, and transfer.json (what predict reads)."""
    extra = os.path.join(path, "assets.extra")
    os.makedirs(extra, exist_ok=True)
    write_labels(extra, loaded.labels)
    height, width = loaded.image_size
    signatures = {BYTES_SIGNATURE: {"input": BYTES_INPUT, "dtype": "string", "shape": [None],
                                               "formats": list(MAGIC)},
                  PIXELS_SIGNATURE: {"input": PIXELS_INPUT, "dtype": "float32",
                                                "shape": [None, height, width, 3], "pixels": "RGB 0-255"}}
    verification = {k: v for k, v in result.to_dict().items() if k not in ("path", "version", "labels", "size")}
    runs.write_json(os.path.join(extra, runs.TFLITE_INFO_FILE),
                    {"format": "saved_model", **provenance(loaded, run), "signatures": signatures,
                     "outputs": {"probabilities": "float32 [N, classes]",
                                 "classes": f"string [N, {min(TOP_K, len(loaded.labels))}], best first",
                                 "scores": "float32, the probabilities of classes"},
                     "verification": verification})
    runs.write_json(os.path.join(extra, runs.EXPORT_INFO_FILE),
                    {"labels": loaded.labels, "image_size": [height, width], "resize": loaded.resize,
                     "input": PIXELS_INPUT, "output": "probabilities",
                     "source": os.path.abspath(loaded.source)})


def _folder_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def verify_saved_model(loaded, path: str, paths: list[str], images: np.ndarray) -> ExportResult:
    """Both signatures of the SavedModel at ``path`` against the Keras model on real photos; raise below thresholds.

    ``predict_images`` gets the pixels Keras got (``images``, decoded from
    ``paths`` as predict does); ``serving_default`` gets the files' bytes.
    """
    import tensorflow as tf

    signatures = tf.saved_model.load(path).signatures
    expected = in_batches(loaded.predict_batch, images)
    pixels = in_batches(lambda batch: signatures[PIXELS_SIGNATURE](
        **{PIXELS_INPUT: tf.constant(batch)}), images)
    encoded = np.array([_read_bytes(p) for p in paths], dtype=object)
    from_bytes = in_batches(lambda batch: signatures[BYTES_SIGNATURE](
        **{BYTES_INPUT: tf.constant(batch, tf.string)}), encoded)
    result = ExportResult(path, 0, loaded.labels, len(images), *compare(expected, pixels["probabilities"]),
                          *compare(expected, from_bytes["probabilities"]), 0)
    least, most = THRESHOLDS["none"]
    problem = None
    if result.top1_agreement < least or not result.max_abs_diff < most:
        problem = (f"its predict_images signature disagrees with the Keras model (top-1 agreement "
                   f"{result.top1_agreement:.1%}, max |Δp| {result.max_abs_diff:.2g}; needed {least:.0%} and "
                   f"below {most:g})")
    elif result.bytes_top1_agreement < BYTES_TOP1:
        problem = (f"its serving_default signature (decoding the files in the graph) agrees with transfer predict "
                   f"on only {result.bytes_top1_agreement:.1%} of them (needed {BYTES_TOP1:.0%})")
    elif [row[0].decode() for row in pixels["classes"]] != [loaded.labels[i] for i in np.argmax(expected, -1)]:
        problem = "its classes output does not name the labels of the run"
    if problem:
        raise RunError(f"the exported SavedModel was checked on {len(images)} validation images and {problem}; "
                       "nothing was written.")
    return result


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write(model, path: str, labels: list[str], resize: str) -> None:
    """The SavedModel of a Keras classifier (raw RGB 0-255 in, probabilities out) with both signatures."""
    import keras
    import tensorflow as tf

    height, width = model.input_shape[1:3]
    k = min(TOP_K, len(labels))

    def predict_images(image):
        probabilities = tf.cast(model(image, training=False), tf.float32)
        scores, indices = tf.math.top_k(probabilities, k)
        return {"probabilities": probabilities, "classes": tf.gather(tf.constant(labels), indices), "scores": scores}

    def serve(image_bytes):
        return predict_images(decode_batch(image_bytes, (height, width), resize))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(BYTES_SIGNATURE, serve, input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)])
    archive.add_endpoint(PIXELS_SIGNATURE, predict_images,
                         input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32, name=PIXELS_INPUT)])
    archive.write_out(path, verbose=False)


def decode_batch(image_bytes, size: tuple[int, int], resize: str):
    """Encoded images [N] -> float32 [N, H, W, 3] pixels as :func:`transfer.data.images.load_image` gives them."""
    import tensorflow as tf

    def one(element):
        index, data = element
        return decode(data, index, size, resize)

    indices = tf.range(tf.shape(image_bytes, out_type=tf.int64)[0])
    return tf.map_fn(one, (indices, image_bytes), fn_output_signature=tf.TensorSpec((*size, 3), tf.float32))


def decode(data, index, size: tuple[int, int], resize: str):
    """One encoded image -> float32 [H, W, 3]; an error naming ``image_bytes[index]`` if it is no known format."""
    import tensorflow as tf

    known = tf.reduce_any([tf.strings.substr(data, 0, len(magic)) == magic for magic in MAGIC.values()])
    check = tf.debugging.Assert(known, [tf.strings.format(
        "image_bytes[{}] is not a JPEG, PNG, GIF or BMP image (first bytes {}); send the file's bytes as they are",
        (index, tf.strings.substr(data, 0, 8)))])
    with tf.control_dependencies([check]):
        magic = tf.strings.substr(data, 0, 8)
        image = tf.case([(tf.equal(tf.strings.substr(magic, 0, 3), MAGIC["JPEG"]),
                          lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")),
                         (tf.equal(magic, MAGIC["PNG"]), lambda: _on_white(tf.io.decode_png(data, channels=4)))],
                        default=lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
    return _resized(image, size, resize)


def _on_white(rgba):
    """Transparent pixels composited onto white, as :func:`transfer.data.images.open_rgb` does."""
    import tensorflow as tf

    rgba = tf.cast(rgba, tf.float32)
    alpha = rgba[..., 3:] / 255.0
    return tf.cast(tf.round(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)), tf.uint8)


def _resized(image, size: tuple[int, int], resize: str):
    """Bilinear with antialiasing to ``size`` (squash), or from the largest centred box of its shape (crop),
    rounded to whole pixel values: Pillow's ``resize`` and ``ImageOps.fit``."""
    import tensorflow as tf

    height, width = size
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    box = shape
    if resize == "crop":
        box_width = tf.minimum(shape[1], shape[0] * width / height)
        box = tf.stack([box_width * height / width, box_width])
    scale = tf.constant([height, width], tf.float32) / box
    translation = -(shape - box) / 2 * scale
    out = tf.raw_ops.ScaleAndTranslate(images=image[None], size=[height, width], scale=scale, translation=translation,
                                       kernel_type="triangle", antialias=True)[0]
    return tf.clip_by_value(tf.round(out), 0.0, 255.0)
