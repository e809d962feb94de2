"""Two pretrained backbones side by side: ``--backbone A+B`` concatenates their feature maps.

Different networks see different things in the same image, and a head on both
feature sets can beat either alone: on the blood-cell set (far from ImageNet),
a head on EfficientNet-Lite0's and Lite1's features concatenated scored 0.928
in 5-fold cross-validation, against 0.890 for the better of the two alone
(BENCHMARKS.md, "Two backbones' features concatenated"). ``--backbone auto``
measures the pair of its two best candidates next to them and keeps it where it
measures better.

Both members see the same image at the same size, so they must share their
preprocessing and give maps of the same height and width (EfficientNet-Lite0/1/2
do: the same preprocessing, a stride of 32). The pair trains its head only by
default: fine-tuning would unfreeze both whole networks.
"""

from __future__ import annotations

import os

from ..errors import ConfigError
from .registry import BackboneSpec, get, register_source

SEPARATOR = "+"


def from_pair(name: str, unsafe: bool = False) -> BackboneSpec | None:
    """The spec of ``A+B`` (two pretrained registry entries), or None when ``name`` is not a pair."""
    if SEPARATOR not in name or os.path.exists(name):
        return None
    parts = [part.strip() for part in name.split(SEPARATOR)]
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--backbone {name!r}: a pair is two backbone names joined by '+', e.g. "
                          "efficientnet_lite0+efficientnet_lite1.")
    first, second = (get(part) for part in parts)
    return pair(first, second)


def pair(first: BackboneSpec, second: BackboneSpec) -> BackboneSpec:
    """``first`` and ``second`` concatenated; a clear error where they cannot see the same image."""
    name = f"{first.name}{SEPARATOR}{second.name}"
    why = unpairable(first, second)
    if why:
        raise ConfigError(f"--backbone {name}: {why}. Pair two different pretrained backbones with the same "
                          "preprocessing (e.g. efficientnet_lite0+efficientnet_lite1).")
    return BackboneSpec(
        name=name, build=_builder(first, second), preprocessing=first.preprocessing,
        default_size=max(first.default_size, second.default_size), min_size=max(first.min_size, second.min_size),
        unfreeze="all", params=first.params + second.params, kind="pretrained", head=first.head,
        fine_tune="off", fine_tune_epochs=0, fine_tune_optimizer=first.fine_tune_optimizer,
        # one view where either member caches one (its cost chose it), else the kind's default
        augment="none" if "none" in (first.augment, second.augment) else first.augment or second.augment,
        description=f"{first.name} and {second.name}, their feature maps concatenated",
        weights_source=lambda spec, cache_dir=None: "; ".join(
            f"{member.name}: {member.weights_source(member, cache_dir)}" for member in (first, second)))


def unpairable(first: BackboneSpec, second: BackboneSpec) -> str:
    """Why the two cannot pair, or ''."""
    if first.name == second.name:
        return f"both are {first.name}"
    if first.kind != "pretrained" or second.kind != "pretrained":
        return "only pretrained registry entries pair"
    if first.preprocessing != second.preprocessing:
        return f"their preprocessing differs ({first.preprocessing}, {second.preprocessing}), so they cannot share one input"
    return ""


def _builder(first: BackboneSpec, second: BackboneSpec):
    def build(input_shape, weights=None, **options):
        """Both bases on one input (each a nested model named for its entry), their maps concatenated."""
        import keras

        image = keras.Input(input_shape, name="image")
        maps = []
        for member in (first, second):
            base = member.build(input_shape, weights=weights, **options)
            member_model = keras.Model(base.inputs, base.outputs, name=os.path.basename(member.name))
            maps.append(keras.tree.flatten(member_model(image))[0])
        if tuple(maps[0].shape[1:3]) != tuple(maps[1].shape[1:3]):
            raise ConfigError(f"--backbone {first.name}{SEPARATOR}{second.name}: at {input_shape[0]} px their "
                              f"feature maps differ in size ({tuple(maps[0].shape[1:3])}, "
                              f"{tuple(maps[1].shape[1:3])}); pair backbones of the same stride.")
        return keras.Model(image, keras.layers.Concatenate(name="concatenated")(maps), name="pair")

    return build


register_source(from_pair)
