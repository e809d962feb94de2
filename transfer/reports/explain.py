"""Grad-CAM: where in each image the model looks for the class it predicts (``transfer explain``).

The model is walked layer by layer (nested backbones and heads included), so
the last 4-D feature map is found wherever it sits and whatever layer classes
build the model. Test-time mirroring is handled without knowing how it is
built: the views that see the image mirrored are found by their data flow
(:func:`orientations`), and their maps are flipped back before they are added up.
"""

from __future__ import annotations

import difflib
import inspect
import os
from dataclasses import dataclass, field

import numpy as np

from . import figures
from .. import inputs as inputs_, outputs
from ..errors import ConfigError, ImageError, RunError
from ..data.images import MAX_PIXELS, load_image
from ..prediction import collect_inputs
from ..runners import LoadedModel, load_model

SHEET_STEM = "contact_sheet"
SHEET_MAX = 48  # images on the contact sheet; every image still gets its own PNG
SHOW_SIZE = 224  # heat maps of smaller inputs are enlarged to this for display
BATCH = 16


@dataclass
class Tap:
    """One call of one layer during a walk: its name (``outer/inner`` inside nested models) and output."""

    name: str
    layer: object
    inputs: object
    output: object


@dataclass
class Explanation:
    path: str
    label: str  # the predicted label
    probability: float
    target: str  # the class the heat map is for (the predicted one unless --class)
    heatmap: np.ndarray  # (height, width) in [0, 1], at the model's input size
    image: np.ndarray  # (height, width, 3) uint8, what the model saw
    png: str = ""

    def to_dict(self) -> dict:
        return {"path": self.path, "label": self.label, "probability": self.probability, "class": self.target,
                "png": self.png}


@dataclass
class ExplainResult:
    layer: str
    output_dir: str
    contact_sheet: str = ""
    explanations: list[Explanation] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)


def walk(model, x):
    """Run ``model`` on ``x`` in inference mode, layer by layer; return (outputs, taps of every leaf layer call).

    Functional and Sequential models are entered, so the layers of a nested
    backbone are taps like any other. Relies on Keras 3's
    ``Functional._run_through_graph``, the loop that ``Functional.call`` runs.
    """
    taps: list[Tap] = []
    return _enter(model, x, "", taps), taps


def _enter(model, x, prefix: str, taps: list[Tap]):
    import keras

    if isinstance(model, keras.Sequential):
        for layer in model.layers:
            x = _leaf_or_model(layer, prefix, taps)(x)
        return x
    return model._run_through_graph(x, operation_fn=lambda op: _leaf_or_model(op, prefix, taps))


def _leaf_or_model(op, prefix: str, taps: list[Tap]):
    import keras

    if isinstance(op, keras.Sequential) or (isinstance(op, keras.Model) and hasattr(op, "_run_through_graph")):
        return lambda inputs, *args, **kwargs: _enter(op, inputs, f"{prefix}{op.name}/", taps)

    def call(*args, **kwargs):
        if "training" in inspect.signature(op.call).parameters:
            kwargs["training"] = False  # Keras' random layers default to training=True
        output = op(*args, **kwargs)
        taps.append(Tap(prefix + op.name, op, args[0] if args else None, output))
        return output

    return call


def feature_taps(taps: list[Tap]) -> list[str]:
    """Names of the layers with 4-D outputs (feature maps), in the order they run, each once."""
    return list(dict.fromkeys(t.name for t in taps if len(getattr(t.output, "shape", ())) == 4))


def resolve_layer(name: str, names: list[str], option: str = "--layer") -> str:
    """The full name of layer ``name`` (a full ``outer/inner`` name or an unambiguous inner name)."""
    if name in names:
        return name
    matches = [n for n in names if n.rsplit("/", 1)[-1] == name]
    if len(matches) == 1:
        return matches[0]
    short = [n.rsplit("/", 1)[-1] for n in names]
    valid = [s if short.count(s) == 1 else n for s, n in zip(short, names)]
    if len(matches) > 1:
        raise ConfigError(f"{option} {name!r} names several layers ({', '.join(matches)}); give the full name.")
    close = difflib.get_close_matches(name, short, n=5, cutoff=0.5)
    hint = f" Closest: {', '.join(close)}." if close else ""
    raise ConfigError(f"{option} {name!r}: the model has no layer of that name with a 4-D output (a feature map).{hint}"
                      f" Valid layers: {', '.join(valid)}.")


def last_feature_map(names: list[str], taps: list[Tap]) -> str:
    """The last layer whose output is a feature map larger than 1x1 (else the last 4-D one): Grad-CAM's default."""
    shapes = {t.name: tuple(t.output.shape) for t in taps}
    wide = [n for n in names if shapes[n][1] * shapes[n][2] > 1]
    if not (wide or names):
        raise RunError("the model has no layer with a 4-D output (a feature map), so Grad-CAM has nothing to weigh.")
    return (wide or names)[-1]


def orientations(model, layer: str) -> list[list[bool]]:
    """For each call of ``layer`` and each block of its batch, whether that view sees the image mirrored.

    On a random (asymmetric) probe image, a mirror point is a block of an
    image-sized tensor that equals an earlier tensor it is computed from,
    flipped left to right: test-time mirroring, however it is built (a layer
    that appends mirror images to the batch, or a branch that flips). A view is
    mirrored when its feature map is computed from a mirror point.
    """
    import tensorflow as tf

    height, width = model.input_shape[1:3]
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, height, width, 3)), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)  # else the ops before the first weights (mirroring among them) are not recorded
        _, taps = walk(model, x)
    points = _mirror_points(x, taps, tape)
    return [[any(_depends(tape, t.output, view, point, block) for point, block in points)
             for view in range(t.output.shape[0])] for t in taps if t.name == layer]


def _mirror_points(x, taps: list[Tap], tape) -> list[tuple[object, int]]:
    """(tensor, batch block) pairs that hold the mirror image of an earlier image-sized tensor they derive from."""
    earlier = [(x, np.asarray(x, np.float32)[0])]
    points = []
    for tap in taps:
        if len(getattr(tap.output, "shape", ())) != 4 or tuple(tap.output.shape[1:3]) != earlier[0][1].shape[:2]:
            continue
        output = np.asarray(tap.output, np.float32)
        for block, row in enumerate(output):
            if any(row.shape == e.shape and _close(row, e[:, ::-1]) and not _close(row, e)
                   and _depends(tape, tap.output, block, tensor, 0) for tensor, e in earlier):
                points.append((tap.output, block))
        earlier.append((tap.output, output[0]))
    return points


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.allclose(a, b, rtol=1e-4, atol=1e-4 * (np.abs(b).max() + 1e-6)))


def _depends(tape, target, target_block: int, source, source_block: int) -> bool:
    """Whether batch block ``target_block`` of ``target`` is computed from block ``source_block`` of ``source``."""
    import tensorflow as tf

    mask = np.zeros(target.shape, np.float32)
    mask[target_block] = 1
    gradient = tape.gradient(target, source, output_gradients=tf.constant(mask, target.dtype))
    return gradient is not None and bool(np.any(np.asarray(gradient)[source_block] != 0))


def gradcam(model, images: np.ndarray, layer: str, target: int | None = None,
            mirrored: list[list[bool]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, heat maps): Grad-CAM of ``layer`` for class ``target`` (default: each image's top class).

    The class score is its pre-softmax logit where the model has one (a
    softmax probability saturates, and its gradient vanishes, on a confident
    prediction); each view's map is ReLU(sum_k alpha_k A_k) with alpha_k the
    mean gradient of channel k; mirrored views are flipped back and the views
    added. Maps are scaled to [0, 1] per image and resized to the input size.
    """
    import tensorflow as tf

    n = len(images)
    x = tf.convert_to_tensor(images, tf.float32)
    with tf.GradientTape() as tape:
        probabilities, taps = walk(model, x)
        probabilities = tf.cast(tf.convert_to_tensor(probabilities), tf.float32)
        classes = tf.argmax(probabilities, axis=-1) if target is None else tf.fill([n], tf.cast(target, tf.int64))
        maps = [t.output for t in taps if t.name == layer]
        score = _class_score(taps, probabilities, classes, n)
    grads = tape.gradient(score, maps)
    mirrored = mirrored or [[False] * (m.shape[0] // n) for m in maps]
    total = np.zeros((n, *maps[0].shape[1:3]), np.float32)
    for a, g, flips in zip(maps, grads, mirrored):
        a, g = np.asarray(a, np.float32), np.zeros(a.shape, np.float32) if g is None else np.asarray(g, np.float32)
        for v, flip in enumerate(flips):
            rows = slice(v * n, (v + 1) * n)
            cam = np.maximum(np.einsum("nhwc,nc->nhw", a[rows], g[rows].mean(axis=(1, 2))), 0)
            total += cam[:, :, ::-1] if flip else cam
    peak = total.max(axis=(1, 2), keepdims=True)
    total = np.divide(total, peak, out=np.zeros_like(total), where=peak > 0)
    size = images.shape[1:3]
    heatmaps = tf.image.resize(total[..., None], size, method="bilinear").numpy()[..., 0]
    return probabilities.numpy(), np.clip(heatmaps, 0, 1)


def _class_score(taps: list[Tap], probabilities, classes, n: int):
    """Sum over images (and views) of the class's logit; the log-probability when no softmax layer is found."""
    import keras
    import tensorflow as tf

    softmax = [t for t in taps if getattr(t.layer, "activation", None) is keras.activations.softmax]
    if not softmax:
        return tf.reduce_sum(tf.math.log(tf.gather(probabilities, classes, batch_dims=1) + 1e-12))
    logits = [_logits(t) for t in softmax if t.layer is softmax[-1].layer]
    score = 0.0
    for z in logits:
        z = tf.cast(z, tf.float32)
        score += tf.reduce_sum(tf.gather(z, tf.tile(classes, [z.shape[0] // n]), batch_dims=1))
    return score


def _logits(tap: Tap):
    """The pre-softmax values of a softmax layer's call: recomputed for a Dense, its input for an Activation."""
    import keras
    from keras import ops

    if not isinstance(tap.layer, keras.layers.Dense):
        return tap.inputs
    layer = tap.layer
    z = ops.matmul(ops.cast(tap.inputs, layer.kernel.dtype), layer.kernel)
    return z + layer.bias if layer.use_bias else z


def keras_model_of(model, unsafe: bool = False) -> LoadedModel:
    """A run folder or ``.keras`` file, loaded as :func:`transfer.runners.load_model` does; gradients need Keras."""
    loaded = model if isinstance(model, LoadedModel) else load_model(model, unsafe)
    if loaded.keras_model is None:
        raise RunError(f"{loaded.source!r} is an export (SavedModel or .tflite), which gives neither gradients nor "
                       "layers; use the run folder or .keras file it was exported from.")
    return loaded


def class_index(name: str | None, labels: list[str]) -> int | None:
    """The output index of class ``name`` (None: each image's predicted class)."""
    if name is None:
        return None
    if name not in labels:
        raise ConfigError(f"--class {name!r} is not a class of the model; valid classes: {', '.join(labels)}.")
    return labels.index(name)


def read_images(paths: list[str], loaded: LoadedModel, max_pixels: int) -> tuple[list[str], list, list]:
    """(paths read, images, failures): decoded and resized exactly as ``predict`` does."""
    good, images, failures = [], [], []
    for path in paths:
        try:
            images.append(load_image(path, loaded.image_size, loaded.resize, max_pixels))
            good.append(path)
        except ImageError as error:
            failures.append((path, str(error)))
    return good, images, failures


def explain(model, inputs: list[str], target: str | None = None, layer: str | None = None, output: str | None = None,
            max_pixels: int = MAX_PIXELS, unsafe: bool = False) -> ExplainResult:
    """Grad-CAM heat maps of ``inputs`` (files, folders, globs) laid over each image, one PNG each and a contact sheet.

    ``target`` is a class name (default: each image's predicted class);
    ``layer`` a layer with a 4-D output (default: the last such layer).
    Files go to ``output`` (default ``./explain-<run name>``), never over an
    existing file; unreadable images go to ``failures``.
    """
    inputs = inputs_.paths(inputs, "inputs")
    target, layer = inputs_.name(target, "target", optional=True), inputs_.name(layer, "layer", optional=True)
    output = inputs_.path(output, "output", optional=True)
    loaded = keras_model_of(model, unsafe)
    index = class_index(target, loaded.labels)
    output = output or figures.default_folder("explain", loaded.source)
    outputs.check_output(output, "--output", datasets=[p for p in inputs if os.path.isdir(p)],
                         run=outputs.run_of(loaded.source))
    figures.check_folder(output)
    paths, failures = collect_inputs(inputs)
    paths, images, unread = read_images(paths, loaded, max_pixels)
    result = ExplainResult(layer="", output_dir=output, failures=failures + unread)
    if not images:
        return result
    images = np.stack(images)
    result.layer, probabilities, maps = heatmaps(loaded.keras_model, images, index, layer)
    figures.make_folder(output)
    for path, image, probs, heatmap in zip(paths, images, probabilities, maps):
        top = int(np.argmax(probs))
        item = Explanation(path, loaded.labels[top], float(probs[top]), loaded.labels[top if index is None else index],
                           heatmap, image)
        item.png = figures.save_array(overlay(image, heatmap), output, _stem(path) + "-gradcam")
        result.explanations.append(item)
    result.contact_sheet = contact_sheet(result.explanations, output, result.layer)
    return result


def heatmaps(model, images: np.ndarray, target: int | None = None,
             layer: str | None = None) -> tuple[str, np.ndarray, np.ndarray]:
    """(layer, probabilities, heat maps) of images (RGB 0-255 at the model's input size), writing no file:
    the computation of :func:`explain`, for callers that show the maps elsewhere (a report)."""
    images = np.asarray(images, np.float32)
    _, taps = walk(model, images[:1])
    names = feature_taps(taps)
    layer = resolve_layer(layer, names) if layer else last_feature_map(names, taps)
    mirrored = orientations(model, layer)
    parts = [gradcam(model, images[i:i + BATCH], layer, target, mirrored) for i in range(0, len(images), BATCH)]
    return layer, np.concatenate([p for p, _ in parts]), np.concatenate([h for _, h in parts])


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0] or "image"


def overlay(image: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """The heat map (jet colours) laid over the image, enlarged to at least :data:`SHOW_SIZE` pixels."""
    from PIL import Image

    blended = (0.55 * image + 0.45 * figures.colormap(heatmap)).astype(np.uint8)
    height, width = blended.shape[:2]
    scale = max(1.0, SHOW_SIZE / min(height, width))
    if scale == 1.0:
        return blended
    return np.asarray(Image.fromarray(blended).resize((round(width * scale), round(height * scale)), Image.BILINEAR))


def contact_sheet(explanations: list[Explanation], folder: str, layer: str) -> str:
    """The heat maps on one page (the first :data:`SHEET_MAX`), each titled with its file, label and probability."""
    shown = explanations[:SHEET_MAX]
    titles = []
    for e in shown:
        name = os.fsencode(os.path.basename(e.path)).decode("utf-8", "replace")  # any name the OS allows
        title = f"{name[:28]}\n{e.label} {e.probability:.2f}"
        titles.append(title + (f" (map: {e.target})" if e.target != e.label else ""))
    more = f", the first {len(shown)} of {len(explanations)} images" if len(shown) < len(explanations) else ""
    return figures.save_grid([overlay(e.image, e.heatmap) for e in shown], titles, folder, SHEET_STEM,
                             heading=f"Grad-CAM of layer {layer}{more}", columns=min(4, len(shown)))
