"""The SavedModel of ``transfer export``: encoded images in, labels out, for TensorFlow Serving.

Two signatures, written with ``keras.export.ExportArchive`` so their names are fixed:

- ``serving_default``: ``image_bytes`` (tf.string [N]: JPEG, PNG, GIF or BMP
  files, what TF Serving's REST API delivers from ``{"b64": ...}``), decoded,
  resized and preprocessed inside the graph;
- ``predict_images``: ``image`` (float32 [N, H, W, 3], RGB 0-255 at the model's size).

Both return ``probabilities`` [N, C], ``classes`` [N, k] (the top-k labels,
k = min(5, C), from a constant inside the graph) and ``scores`` [N, k].

In-graph decoding follows :func:`transfer.images.load_image` as closely as
TensorFlow's ops allow: JPEG with the accurate DCT (Pillow's), transparent PNG
pixels composited onto white, bilinear resizing with Pillow's antialiasing
(``ScaleAndTranslate``, the kernel of ``tf.image.resize(antialias=True)``),
over the same centred box for ``--resize crop``, rounded to 8 bits as Pillow's
are. What it cannot do: apply EXIF orientation (the client must rotate first),
read WebP or TIFF, or composite a transparent GIF; README.md gives the
measured differences.
"""

from __future__ import annotations

BYTES_SIGNATURE, BYTES_INPUT = "serving_default", "image_bytes"
PIXELS_SIGNATURE, PIXELS_INPUT = "predict_images", "image"
OUTPUTS = ("probabilities", "classes", "scores")
TOP_K = 5
#: the first bytes of the formats the graph decodes
MAGIC = {"JPEG": b"\xff\xd8\xff", "PNG": b"\x89PNG\r\n\x1a\n", "GIF": b"GIF8", "BMP": b"BM"}


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
    """Encoded images [N] -> float32 [N, H, W, 3] pixels as :func:`transfer.images.load_image` gives them."""
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
    """Transparent pixels composited onto white, as :func:`transfer.images.open_rgb` does."""
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
