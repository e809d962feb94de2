"""What a convnet learned (``transfer visualize``): its first layer's filters and, on an image, its feature maps.

The lectures this product comes from show "typical convolutional filters after
training": the first layer's kernels are small images of the colours and edges
it looks for. The activation maps show what later layers respond to in one
image. Layers are found by walking the model (see :func:`transfer.explain.walk`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import figures
from .. import inputs as inputs_, outputs
from ..errors import ConfigError, RunError
from .explain import feature_taps, keras_model_of, orientations, read_images, resolve_layer, walk
from ..data.images import MAX_PIXELS

MAX_FILTERS = 256
MAX_CHANNELS = 32  # activation maps shown per layer: the most active channels
DEFAULT_LAYERS = 4  # evenly spaced convolutional layers when --layer is not given


@dataclass
class VisualizeResult:
    output_dir: str
    filters_layer: str = ""
    filters: str = ""  # the PNG
    activations: dict[str, str] = field(default_factory=dict)  # layer -> PNG

    def to_dict(self) -> dict:
        return {"output_dir": self.output_dir, "filters_layer": self.filters_layer, "filters": self.filters,
                "activations": self.activations}


def leaf_layers(model):
    """Every layer of the model that is not itself a model, nested backbones entered, in order."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from leaf_layers(layer)
        else:
            yield layer


def is_conv(layer) -> bool:
    """A 2-D convolution of any kind: a layer with a 4-D kernel (Conv2D, DepthwiseConv2D...)."""
    kernel = getattr(layer, "kernel", None)
    return kernel is not None and len(kernel.shape) == 4


def filter_tiles(kernel: np.ndarray) -> list[np.ndarray]:
    """Each filter of a ``(kh, kw, in, out)`` kernel min-max scaled to [0, 1]: RGB for 3 input channels, else their mean."""
    tiles = []
    for f in np.moveaxis(np.asarray(kernel, np.float32), -1, 0)[:MAX_FILTERS]:
        f = f if f.shape[-1] == 3 else f.mean(axis=-1)
        low, high = f.min(), f.max()
        tiles.append((f - low) / (high - low) if high > low else np.zeros_like(f))
    return tiles


def visualize(model, layers: list[str] = (), image: str | None = None, output: str | None = None,
              max_pixels: int = MAX_PIXELS, unsafe: bool = False) -> VisualizeResult:
    """The first convolutional layer's filters as a grid; with ``image``, the activation maps of ``layers``
    (default: a few evenly spaced convolutional layers). Files go to ``output``
    (default ``./visualize-<run name>``), never over an existing file.
    """
    layers = inputs_.names(layers, "layers")
    image, output = inputs_.path(image, "image", optional=True), inputs_.path(output, "output", optional=True)
    loaded = keras_model_of(model, unsafe)
    if layers and image is None:
        raise ConfigError("--layer chooses the layers whose activation maps --image shows; give --image too.")
    output = output or figures.default_folder("visualize", loaded.source)
    outputs.check_output(output, "--output", run=outputs.run_of(loaded.source))
    figures.check_folder(output)
    result = VisualizeResult(output)
    convs = [layer for layer in leaf_layers(loaded.keras_model) if is_conv(layer)]
    if not convs:
        raise RunError(f"{loaded.source!r} has no convolutional layer, so it has no filters to show.")
    maps = _activations(loaded, layers, image, max_pixels) if image is not None else {}
    figures.make_folder(output)
    first = convs[0]
    tiles = filter_tiles(first.kernel.numpy())
    result.filters_layer = first.name
    kernel = tuple(first.kernel.shape)
    colour = "RGB" if kernel[2] == 3 else f"mean of {kernel[2]} input channels"
    result.filters = figures.save_grid(tiles, [str(i) for i in range(len(tiles))], output, "filters",
                                       heading=f"{first.name}: {kernel[3]} filters {kernel[0]}x{kernel[1]} ({colour})",
                                       cmap=None if kernel[2] == 3 else "gray")
    for name, activation in maps.items():
        channels = np.argsort(-activation.mean(axis=(0, 1)))[:MAX_CHANNELS]
        result.activations[name] = figures.save_grid(
            [activation[..., c] for c in channels], [f"channel {c}" for c in channels], output,
            "activations-" + name.replace("/", "-"), cmap="viridis",
            heading=f"{name}: {activation.shape[0]}x{activation.shape[1]}x{activation.shape[2]}, "
                    f"the {len(channels)} most active channels")
    return result


def _activations(loaded, layers: list[str], image: str, max_pixels: int) -> dict[str, np.ndarray]:
    """Layer name -> its feature map ``(h, w, channels)`` for ``image``."""
    _, pixels, failures = read_images([image], loaded, max_pixels)
    if failures:
        raise ConfigError(f"--image {image!r} cannot be read: {failures[0][1]}.")
    _, taps = walk(loaded.keras_model, np.stack(pixels).astype(np.float32))
    names = feature_taps(taps)
    if layers:
        chosen = [resolve_layer(name, names) for name in layers]
    else:
        convs = [name for name in names if is_conv(next(t.layer for t in taps if t.name == name))]
        chosen = [convs[i] for i in sorted({round(i) for i in np.linspace(0, len(convs) - 1, DEFAULT_LAYERS)})]
    return {name: _own_view(loaded.keras_model, taps, name) for name in dict.fromkeys(chosen)}


def _own_view(model, taps, name: str) -> np.ndarray:
    """A layer's feature map of the image itself: with test-time mirroring, not the mirror image's."""
    outputs = [t.output for t in taps if t.name == name]
    flags = orientations(model, name)
    call, view = next(((c, v) for c, views in enumerate(flags) for v, mirrored in enumerate(views) if not mirrored),
                      (0, 0))
    return np.asarray(outputs[call], np.float32)[view]
