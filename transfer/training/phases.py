"""The phases of a run, one object each: what it trains, on which inputs, with which optimizer and schedule.

Phase 1 (``head``) trains the head on a frozen backbone (or, from scratch, the
whole network); phase 2 (``fine_tune``) unfreezes the backbone's top; under
``--fine-tune auto`` a ``deeper`` phase may unfreeze more of it (a probe decides:
:mod:`.probe`). Each may run on images or, where the backbone's bottom is frozen,
on what the frozen part computes, cached once (:mod:`transfer.features`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import keras
import numpy as np

from .. import data, features
from ..backbones import BackboneSpec
from ..config import TrainConfig
from ..heads import freeze_backbone, unfreeze_top
from ..layers import SparseSmoothedCrossentropy
from . import fasthead

log = logging.getLogger("transfer")


@dataclass
class Inputs:
    """What one phase fits: ``model`` on ``train_ds``, validated on ``val_ds``.

    ``full_model`` is set when ``model`` is only the trainable top of it, fed
    with cached features or activations; it shares the top's layers, so it is
    the model that is checkpointed, backed up and saved.
    """

    model: keras.Model
    train_ds: Any
    val_ds: Any
    full_model: keras.Model | None = None
    arrays: fasthead.Arrays | None = None  # the cached features themselves, when they are in RAM

    @property
    def whole(self) -> keras.Model:
        return self.full_model or self.model


@dataclass
class Phase:
    """One phase of the schedule. ``setup`` makes the right layers trainable and returns its inputs
    (computing a feature cache the first time); ``share`` is its part of the time left when it starts."""

    name: str  # history.csv's phase column: head, fine_tune or deeper
    epochs: int
    optimizer: str
    lr: float
    lr_option: str  # the setting behind ``lr``, for messages
    setup: Callable[[], Inputs]
    share: float = 1.0
    estimate: Callable[[], float] = lambda: 0.0  # seconds its setup takes, guessed before it (for --time-limit)


@dataclass
class Sources:
    """Everything a phase may train on: the decoded images, and the caches (None: not cached)."""

    model: keras.Model
    spec: BackboneSpec
    dataset: data.Dataset
    train_images: Any  # decoded (image, label) pairs; each phase draws its own shuffle from them
    val_ds: Any
    cache: features.FeatureCache | None  # phase 1: pooled features of the frozen backbone
    boundary: features.FeatureCache | None  # phase 2: activations where the frozen bottom ends
    deeper: features.FeatureCache | None = None  # the deeper phase's: where its frozen bottom ends


def plan(config: TrainConfig, sources: Sources) -> list[Phase]:
    """The phases this run trains, in order (a phase of 0 epochs is left out)."""
    phases = []
    fine_tune_epochs = config.fine_tune_epochs if config.fine_tunes else 0
    if config.epochs:
        phases.append(Phase("head", config.epochs, config.optimizer, config.lr, "lr", lambda: _head(config, sources),
                            share=config.epochs / (config.epochs + fine_tune_epochs)))
    if fine_tune_epochs:
        phases.append(Phase("fine_tune", fine_tune_epochs, config.fine_tune_optimizer, config.fine_tune_lr,
                            "fine_tune_lr", lambda: _fine_tune(config, sources),
                            estimate=lambda: _boundary_cost(sources, sources.boundary)))
    if fine_tune_epochs and config.deepens:
        phases.append(Phase("deeper", fine_tune_epochs, config.fine_tune_optimizer, config.fine_tune_lr,
                            "fine_tune_lr", lambda: _deeper(config, sources),
                            estimate=lambda: _boundary_cost(sources, sources.deeper)))
    return phases


def _boundary_cost(sources: Sources, boundary: features.FeatureCache | None) -> float:
    """A boundary pass, guessed from phase 1's pass over the same images (through the whole backbone, so
    more); 0 where phase 1 read its features from the cache or ran on images."""
    return sources.cache.seconds if boundary is not None and sources.cache is not None else 0.0


def _head(config: TrainConfig, sources: Sources) -> Inputs:
    model, pretrained = sources.model, sources.spec.pretrained
    freeze_backbone(model, frozen=pretrained)
    log.info("phase 1: %s", "head only, backbone frozen" if pretrained else "whole network, from scratch")
    return _inputs(config, sources, sources.cache)


def _fine_tune(config: TrainConfig, sources: Sources) -> Inputs:
    n = unfreeze_top(sources.model, config.unfreeze, keep_batchnorm_frozen=sources.spec.pretrained)
    log.info("phase 2: fine-tuning %d backbone layers from %s", n, config.unfreeze)
    return _inputs(config, sources, sources.boundary)


def _deeper(config: TrainConfig, sources: Sources) -> Inputs:
    n = unfreeze_top(sources.model, config.deeper_unfreeze, keep_batchnorm_frozen=sources.spec.pretrained)
    log.info("deeper phase: fine-tuning %d backbone layers from %s", n, config.deeper_unfreeze)
    return _inputs(config, sources, sources.deeper)


def _inputs(config: TrainConfig, sources: Sources, cache: features.FeatureCache | None) -> Inputs:
    """The full model on images, or the cache's trainable top on cached features.

    Each phase gets a fresh shuffle (over the same decoded images), so that
    phase 2 sees the same order whether phase 1 ran on images or on cached features.
    """
    dataset = sources.dataset
    images = Inputs(sources.model, data.batches(sources.train_images, config.batch_size, shuffle=True,
                                                seed=config.seed), sources.val_ds)
    if cache is None:
        return images
    if not cache.prepare(dataset.splits["train"] + dataset.splits["val"]):  # one pass of the backbone over both
        log.warning("cached features fit neither --cache-memory nor the cache folder %s; training on images",
                    cache.folder)
        return images
    train_ds = cache.dataset(dataset.splits["train"], shuffle=True, seed=config.seed,
                             pick="random" if config.augment == "flip" else "first")
    val_ds = cache.dataset(dataset.splits["val"], pick="all" if config.tta and cache.view_axis else "first")
    log.info("feature cache %s: %d image(s) from the cache, %d computed%s", cache.folder, cache.hits, cache.computed,
             f", {cache.received} from other workers" if cache.workers else "")
    return Inputs(cache.top, train_ds, val_ds, full_model=sources.model, arrays=_arrays(config, dataset, cache))


def _arrays(config: TrainConfig, dataset: data.Dataset, cache: features.FeatureCache) -> fasthead.Arrays | None:
    """Phase 1's features as arrays (validation: every view with --tta, else the image's), when held in RAM."""
    if not (cache.in_memory and cache.view_axis):
        return None
    train, val = dataset.splits["train"], dataset.splits["val"]
    val_x = cache.features(val)
    return fasthead.Arrays(cache.features(train), _labels(train), val_x if config.tta else val_x[:, :1], _labels(val))


def _labels(examples: list[data.Example]) -> np.ndarray:
    return np.array([e.label for e in examples], dtype=np.int32)


def deadline_of(deadline: float | None, fraction: float) -> float | None:
    """``fraction`` of the time left until ``deadline`` (a ``time.monotonic()``), from now."""
    if deadline is None:
        return None
    now = time.monotonic()
    return now + (deadline - now) * fraction


def make_optimizer(name: str, lr, weight_decay: float | None = None) -> keras.optimizers.Optimizer:
    """``lr`` is a number or a Keras learning-rate schedule; ``weight_decay`` None keeps the optimizer's default."""
    decay = {} if weight_decay is None else {"weight_decay": weight_decay}
    return {
        "adam": lambda: keras.optimizers.Adam(lr, **decay),
        "adamw": lambda: keras.optimizers.AdamW(lr, **decay),
        "rmsprop": lambda: keras.optimizers.RMSprop(lr, **decay),
        "sgd": lambda: keras.optimizers.SGD(lr, momentum=0.9, **decay),
    }[name]()


def compile_model(model, optimizer, config: TrainConfig) -> None:
    """Compile (needed after every change of ``trainable``) with the run's loss."""
    smoothing = config.label_smoothing
    loss = SparseSmoothedCrossentropy(smoothing) if smoothing else "sparse_categorical_crossentropy"
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"], jit_compile=config.jit)
