"""Feature caching for the frozen phase: run the frozen backbone once per image, not once per epoch.

While the backbone is frozen and augmentation is off, the head sees the same
pooled features for an image in every epoch, so recomputing them (what the
Keras transfer-learning guide does) is nearly the whole cost of phase 1 on a
CPU. Here they are computed once and stored on disk, one file per image, keyed
by the image's content (the audit's sha1) inside a folder keyed by everything
else that decides them: the backbone, a fingerprint of its actual weights (so
``--weights none`` with another seed never reuses them), input size, resize
mode, preprocessing, pooling and dtype policy. Files are written to a temporary
name and renamed, so runs sharing the cache never read a torn file.

The head's own layers (after its parameter-free pooling) are trained on the
features; the full model shares those layer objects, so it is ready to
evaluate and save without copying any weights. Fine-tuning works the same way
one level down (boundary caching): the activations where the frozen part of
the backbone ends are cached, and only the unfrozen top and the head run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
import uuid

import keras
import numpy as np

from . import data
from .data.audit import default_cache_dir
from .backbones import BackboneSpec
from .config import TrainConfig
from .console import bar
from .devices import has_gpu
from .errors import ConfigError
from .heads import HEAD_LAYER, backbone_of, unfreeze_index
from .training.distribute import EXCHANGE_BYTES, this_worker

log = logging.getLogger("transfer")

FEATURES_VERSION = 2  # 2: rows hold a views axis (the image, and its mirror image with --augment flip or --tta)
POOL_LAYER = "pool"
#: TFLite's features may differ from Keras' by this much, relative to their largest value (float32 rounding)
ENGINE_TOLERANCE = 1e-3
#: under ``--feature-engine auto``, fewer backbone passes than this are computed with Keras: converting Lite0 to
#: TFLite took 8.2 s and saved 8.0 ms a pass at 224 px (2.2 ms at 96 px), so it pays from about 1000 passes
#: (benchmarks/bench_feature_engine.py, BENCHMARKS.md)
TFLITE_MIN_PASSES = 1000


def use_cache(spec: BackboneSpec, config: TrainConfig) -> bool:
    """Whether phase 1 trains on cached features; says why not (and refuses ``on`` where it cannot apply)."""
    if config.cache_features == "off" or not config.epochs:
        return False
    if not spec.pretrained:
        reason = f"{os.path.basename(spec.name)} is trained from scratch, so its backbone is not frozen in phase 1"
    elif config.augment not in ("none", "flip"):
        reason = f"--augment {config.augment} changes every image in every epoch (--augment flip is cached)"
    else:
        return True
    if config.cache_features == "on":
        raise ConfigError(f"--cache-features on cannot apply: {reason}. Use --cache-features auto or off.")
    log.info("feature caching is off: %s", reason)
    return False


def head_top(model: keras.Model) -> keras.Model:
    """The head after its pooling layer, as a model of its own (the same layer objects, so the same weights).

    It takes the pooled features of one or more views of each image
    (``(batch, views, features)``: the image, and its mirror image) and
    averages its predictions over the views, as ``--tta`` does on images.
    """
    head = model.get_layer(HEAD_LAYER)
    pool = head.get_layer(POOL_LAYER)
    inputs = keras.Input((None, *pool.output.shape[1:]), name="pooled_features")
    x = inputs
    for layer in head.layers[head.layers.index(pool) + 1:]:
        x = layer(x)  # dense layers act on the last axis, so each view goes through the same head
    return keras.Model(inputs, keras.layers.GlobalAveragePooling1D(name="view_mean")(x), name="head_top")


def extractor(model: keras.Model) -> keras.Model:
    """Image (0-255) -> preprocess -> backbone -> pooling: what :func:`head_top` takes (augmentation is off)."""
    inputs = keras.Input(model.input_shape[1:], name="image")
    x = model.get_layer("preprocess")(inputs)
    x = keras.tree.flatten(backbone_of(model)(x))[0]  # the backbone returns a one-element list
    x = model.get_layer(HEAD_LAYER).get_layer(POOL_LAYER)(x)
    return keras.Model(inputs, x, name="feature_extractor")


def model_key(model: keras.Model, config: TrainConfig, boundary: str = "", views: int = 1) -> str:
    """Everything besides the image that decides its features, hashed; the backbone's weights by value."""
    settings = [FEATURES_VERSION, keras.__version__, config.backbone, config.image_size, config.resize,
                model.get_layer("preprocess").mode, config.pooling, keras.mixed_precision.global_policy().name,
                boundary, views]
    digest = hashlib.sha256(json.dumps(settings).encode())
    for weights in backbone_of(model).get_weights():
        digest.update(np.ascontiguousarray(weights).tobytes())
    return digest.hexdigest()[:32]


def views(config: TrainConfig, validation: bool = True) -> int:
    """Views cached per image: 2 (the image and its mirror image) for ``--augment flip``, or ``--tta`` when
    the cache serves validation too; else 1."""
    return 2 if config.augment == "flip" or (config.tta and validation) else 1


def frozen_phase_cache(model: keras.Model, config: TrainConfig, digests: dict[str, str],
                       workers=None) -> "FeatureCache":
    """Phase 1: pooled features of the whole frozen backbone; the head's top trains on them."""
    n = views(config)
    cache = FeatureCache(extractor(model), head_top(model), model_key(model, config, views=n), config, digests,
                         views=n, view_axis=True, workers=workers)
    wider = cache.folder_of(model_key(model, config, views=2)) if n == 1 else None
    if wider is not None and os.path.isdir(wider):  # the image's own features are the first view of a cache that
        cache.wider = wider  # mirrors too (doctor's, or an --augment flip run's)
    return cache


def boundary_cache(model: keras.Model, config: TrainConfig, unfreeze: str, digests: dict[str, str],
                   workers=None) -> "FeatureCache | None":
    """Phase 2 (or the deeper phase: ``unfreeze`` says where it starts): activations where the frozen part of the
    backbone ends; the unfrozen top and the head train on them.

    Only for a clean cut (no later layer reads an earlier tensor than the
    boundary); otherwise None, and phase 2 runs on the images. Activations
    over ``--cache-memory`` are streamed from the cache folder instead of RAM.
    """
    backbone = backbone_of(model)
    start = unfreeze_index(backbone, unfreeze)
    if start == 0:
        return None
    boundary = backbone.layers[start - 1]
    try:
        top = keras.Model(boundary.output, backbone.outputs, name="backbone_top")
    except ValueError:
        log.info("boundary caching is off: the backbone cannot be cut cleanly after %s", boundary.name)
        return None
    inputs = keras.Input(boundary.output.shape[1:], name="boundary_activations")
    trainer = keras.Model(inputs, model.get_layer(HEAD_LAYER)(top(inputs)), name="fine_tune_top")
    image = keras.Input(model.input_shape[1:], name="image")
    bottom = keras.Model(backbone.inputs, boundary.output)(model.get_layer("preprocess")(image))
    n = views(config, validation=False)  # validation runs on the first view; the final evaluation on images
    return FeatureCache(keras.Model(image, bottom, name="frozen_bottom"), trainer,
                        model_key(model, config, boundary.name, n), config, digests, views=n, workers=workers)


class FeatureCache:
    """What a frozen part of the model computes from each image: from disk when present, else computed and stored.

    ``extractor`` maps images to those features; ``top`` is the trainable rest
    of the model, sharing its layers with the full model. Features that fit
    ``--cache-memory`` are held in RAM; beyond it they are streamed from their
    files in the cache folder every epoch (spilled), which needs that folder
    to be writable.

    On a cluster (``workers``) each missing row is computed by one worker and
    sent to the others (:meth:`_share`): the cluster runs the backbone once per
    image, not once per image and worker.
    """

    def __init__(self, extractor: keras.Model, top: keras.Model, key: str, config: TrainConfig,
                 digests: dict[str, str], views: int = 1, view_axis: bool = False, workers=None):
        """``digests`` maps each image path to the sha1 of its bytes (the audit's); ``views``: 1, or 2 to cache
        the mirror image's features too; ``view_axis``: whether ``top`` takes a views axis (:func:`head_top`);
        ``workers``: a cluster's (:class:`transfer.training.distribute.Workers`), or None."""
        self.config = config
        self.digests = digests
        self.folder = self.folder_of(key)
        self.wider: str | None = None  # a folder of the same features with more views per row, read where ours lack
        self.extractor = extractor
        self.top = top
        self.views, self.view_axis = views, view_axis
        self.shape = (views, *extractor.output.shape[1:])  # of one row: every view of one image
        self.row_bytes = 4 * math.prod(self.shape)  # float32
        self.budget = data.memory_budget(config.cache_memory)
        self.in_memory: bool | None = None  # decided by the first prepare()
        self.ready = False  # every prepared row can be read (False after a failed spill)
        self.hits = 0  # images read from disk
        self.computed = 0  # images run through the backbone
        self.received = 0  # images whose features another worker sent
        self.workers = workers
        self._rows: dict[str, np.ndarray] = {}  # in RAM
        self._spilled: set[str] = set()  # on disk, streamed every epoch
        self._writable = True
        self._run = None  # the engine, chosen on the first batch to compute
        self.seconds = 0.0  # spent computing features (decoding the images included)

    def prepare(self, examples: list[data.Example]) -> bool:
        """Have the features of every example ready, computing the missing ones in one pass of the backbone.

        The first call decides between RAM and spilling to disk; False when
        they fit neither (over the budget, and the cache folder cannot be written).
        """
        if self.in_memory is None:
            need = 3 * len(examples) * self.row_bytes  # at the peak: the rows, their stack, the tensor
            self.in_memory = need <= self.budget
            if not self.in_memory:
                log.info("cached features need %.1f GB, over --cache-memory %s: streaming them from %s",
                         need / 1e9, self.config.cache_memory, self.folder)
        missing = [e for e in examples if not self._recall(e.path)]
        if self.workers is not None:
            self._share(examples, {e.path for e in missing})
            missing = [e for e in missing if not self._recall(e.path)]  # only where keeping a row failed
        chunk = len(missing) if self.in_memory else max(self.config.batch_size, self.budget // (2 * self.row_bytes))
        for i in range(0, len(missing), max(1, chunk)):
            if not (self.in_memory or self._writable):
                break  # spilling failed: the caller falls back to the images
            part = missing[i:i + chunk]
            rows = self._compute(part)
            if self.in_memory:
                self._rows.update(zip((e.path for e in part), rows))
            elif self._writable:
                self._spilled.update(e.path for e in part)
        self.ready = self.in_memory or self._writable
        return self.ready

    def _share(self, examples: list[data.Example], lacking: set[str]) -> None:
        """On a cluster: have every row of ``examples`` here, each computed by one worker only.

        The workers first learn who holds which row (the chief may have a cache
        from an earlier run). A row no one holds is computed by one of them, in
        turn; a row some worker lacks is sent by the first that holds it. Every
        worker calls this with the same ``examples``, so the collectives match.
        """
        workers, rank = self.workers, self.workers.rank
        holds = np.zeros((workers.count, len(examples)), np.int32)
        holds[rank] = [e.path not in lacking for e in examples]
        holds = workers.total(holds) > 0
        needed = np.flatnonzero(~holds.all(axis=0))
        owner = np.where(holds[:, needed].any(axis=0), holds[:, needed].argmax(axis=0), -1)
        unheld = owner < 0
        owner[unheld] = np.arange(unheld.sum()) % workers.count
        step = max(1, EXCHANGE_BYTES // self.row_bytes)
        for start in range(0, len(needed), step):
            part, owners = needed[start:start + step], owner[start:start + step]
            rows = np.zeros((len(part), *self.shape), np.float32)
            ours = np.flatnonzero(owners == rank)
            compute = [j for j in ours if not holds[rank, part[j]]]
            if compute:
                rows[compute] = self._compute([examples[part[j]] for j in compute])
            for j in ours:
                if holds[rank, part[j]]:
                    rows[j] = self._row(examples[part[j]].path)
            rows = workers.total(rows)
            for j in np.flatnonzero(~holds[rank, part]):
                example = examples[part[j]]
                if owners[j] != rank:
                    self._write(self._path(example.path), rows[j])
                    self.received += 1
                self._keep(example.path, rows[j])

    def _row(self, image_path: str) -> np.ndarray:
        return self._rows[image_path] if self.in_memory else np.load(self._path(image_path), allow_pickle=False)

    def _keep(self, image_path: str, row: np.ndarray) -> None:
        """Hold a row this worker now has: in RAM, or (spilled) in its file, when that could be written."""
        if self.in_memory:
            self._rows[image_path] = row
        elif self._writable:
            self._spilled.add(image_path)

    def features(self, examples: list[data.Example]) -> np.ndarray:
        """One row of features per example, in order (held in RAM; for tests and small sets)."""
        self.prepare(examples)
        if not self.in_memory:
            return np.stack([np.load(self._path(e.path), allow_pickle=False) for e in examples])
        return np.stack([self._rows[e.path] for e in examples]).astype(np.float32)

    def dataset(self, examples: list[data.Example], shuffle: bool = False, seed: int = 0, pick: str = "first"):
        """Batched (features, label) in the order and batches :func:`transfer.data.make_tf_dataset` would use.

        ``pick`` chooses the views: ``first`` (the image itself), ``random``
        (the image or its mirror image, drawn anew each epoch: what
        ``RandomFlip("horizontal")`` does to images) or ``all`` (for a top that
        averages over views, as ``--tta`` does).
        """
        import tensorflow as tf

        labels = np.array([e.label for e in examples], dtype=np.int32)
        self.prepare(examples)
        if self.in_memory:
            ds = tf.data.Dataset.from_tensor_slices((self.features(examples), labels))
        else:
            ds = tf.data.Dataset.from_tensor_slices(([self._path(e.path) for e in examples], labels))
        if shuffle:  # the same order either way: it depends only on the seed and the count
            ds = ds.shuffle(len(examples), seed=seed, reshuffle_each_iteration=True)
        if not self.in_memory:
            ds = ds.map(self._read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.map(self._picker(pick, seed))  # in order, one element at a time: the same draws on every run
        return ds.batch(self.config.batch_size).prefetch(tf.data.AUTOTUNE)

    def _picker(self, pick: str, seed: int):
        """A tf.data map from (every view, label) to the views ``pick`` asks for, shaped for ``top``."""
        import tensorflow as tf

        if pick == "all" and not self.view_axis:
            raise ValueError("this cache's top takes one view at a time")
        rng = tf.random.Generator.from_seed(seed)  # a new draw per element and per epoch

        def choose(rows, label):
            if pick == "all":
                return rows, label
            index = rng.uniform((), 0, self.views, dtype=tf.int32) if pick == "random" else 0
            row = rows[index]
            return (row[None] if self.view_axis else row), label

        return choose

    def _read(self, path, label):
        """One spilled row, read by tf.data without Python: the float32 data is the last bytes of the .npy."""
        import tensorflow as tf

        raw = tf.io.read_file(path)
        body = tf.strings.substr(raw, tf.strings.length(raw) - self.row_bytes, self.row_bytes)
        return tf.reshape(tf.io.decode_raw(body, tf.float32), self.shape), label

    def folder_of(self, key: str) -> str:
        return os.path.join(self.config.cache_dir or default_cache_dir(), "features", key)

    def _path(self, image_path: str) -> str:
        return os.path.join(self.folder, self.digests[image_path] + ".npy")

    def _recall(self, image_path: str) -> bool:
        """Whether the features of ``image_path`` are ready: in RAM (read from disk if need be) or, spilled, on disk."""
        if image_path in self._rows or image_path in self._spilled:
            return True
        path = self._path(image_path)
        if self.wider is not None and not os.path.exists(path):
            self._adopt(image_path, path)
        if not self.in_memory:
            try:
                if os.path.getsize(path) < self.row_bytes:
                    return False
            except OSError:
                return False
            self._spilled.add(image_path)
            self.hits += 1
            return True
        try:
            self._rows[image_path] = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return False
        self.hits += 1
        return True

    def _adopt(self, image_path: str, path: str) -> None:
        """Write this cache's row of ``image_path`` from the first views of :attr:`wider`'s, where it has one: the
        same numbers without a backbone pass (``doctor`` caches the mirror image too; a ``train`` after it need
        not run the backbone again)."""
        try:
            row = np.load(os.path.join(self.wider, self.digests[image_path] + ".npy"), allow_pickle=False)
        except (OSError, ValueError):
            return
        if row.shape[1:] == self.shape[1:] and len(row) >= self.views:
            self._write(path, np.ascontiguousarray(row[:self.views]))

    def _compute(self, examples: list[data.Example]) -> list[np.ndarray]:
        """Run the backbone on the images not cached yet and store what it gives, one file per image."""
        config = self.config
        images = data.make_tf_dataset(examples, config.image_size, config.batch_size, resize=config.resize,
                                      cache=False, max_pixels=config.max_pixels)
        started = time.monotonic()
        run = self._engine(len(examples) * self.views)
        batches = bar(images, total=math.ceil(len(examples) / config.batch_size), desc="computing features",
                      unit="batch", enabled=config.verbose > 0)
        rows = [row for batch, _ in batches for row in self._views(run, batch.numpy())]
        self.seconds += time.monotonic() - started
        self.computed += len(rows)
        for example, row in zip(examples, rows):
            self._write(self._path(example.path), row)
        return rows

    def _views(self, run, batch: np.ndarray) -> np.ndarray:
        """(batch, views, ...): the features of each image, and of its mirror image when the cache holds two views."""
        mirrored = [batch[:, :, ::-1]] if self.views == 2 else []
        return np.stack([run(b) for b in [batch, *mirrored]], axis=1)

    def _engine(self, passes: int):
        """What computes the features: TFLite with XNNPACK where it applies, pays and agrees with Keras, else Keras.

        The choice is made once per cache, on the first images it computes
        (``passes`` backbone passes): under ``auto``, TFLite only when they are
        at least :data:`TFLITE_MIN_PASSES`; both engines run the first batch,
        and TFLite is kept only if its features match Keras' to within
        :data:`ENGINE_TOLERANCE` (relative).
        """
        if self._run is None:
            mode = self.config.feature_engine
            self._run = _Engine(self.extractor, "keras" if mode == "auto" and passes < TFLITE_MIN_PASSES else mode)
        return self._run

    def _write(self, path: str, row: np.ndarray) -> None:
        """Atomically (temporary file, then rename); a cache that cannot be written only costs time."""
        if not self._writable:
            return
        tmp = f"{path}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            os.makedirs(self.folder, exist_ok=True)
            with open(tmp, "wb") as f:
                np.save(f, row, allow_pickle=False)
            os.replace(tmp, path)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            self._writable = False
            log.warning("could not write the feature cache %s: %s; features are kept in memory only",
                        self.folder, error)



class _Engine:
    """A function from a batch of images (numpy) to features, per ``--feature-engine``.

    ``auto`` takes TFLite (XNNPACK) on a CPU in float32 and checks it on the
    first batch against Keras (with a GPU or mixed precision Keras is the
    faster engine); ``tflite`` insists, failing with an error where it cannot
    apply; ``keras`` never converts.
    """

    def __init__(self, extractor: keras.Model, mode: str):
        self.extractor, self.mode = extractor, mode
        self.model = this_worker(extractor)  # frozen: its weights, copied once, stay the extractor's
        self.runner = None
        self.checked = False
        if mode == "tflite" or (mode == "auto" and not has_gpu()
                                and keras.mixed_precision.global_policy().name == "float32"):
            self.runner = self._convert()

    def _convert(self):
        from .export import tflite
        from .runners import TFLiteRunner

        try:
            return TFLiteRunner(tflite.convert(self.extractor))
        except Exception as error:  # a model TFLite cannot convert: Keras computes the same, slower
            self._refuse(f"the frozen part cannot be converted to TFLite ({error})")
            return None

    def _refuse(self, reason: str) -> None:
        if self.mode == "tflite":
            raise ConfigError(f"--feature-engine tflite: {reason}. Use --feature-engine auto or keras.")
        log.warning("%s; computing features with Keras", reason)

    def keras(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(batch), dtype=np.float32)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.runner is None:
            return self.keras(batch)
        got = self.runner(batch)
        if not self.checked:
            from .export.tflite import agreement

            expected = self.keras(batch)
            diff = agreement(expected, got)
            self.checked = True
            if diff > ENGINE_TOLERANCE:
                self.runner = None
                self._refuse(f"TFLite's features differ from Keras' by {diff:.2g} (relative)")
                return expected
            log.info("features computed with TFLite/XNNPACK (checked against Keras: relative difference %.1g)", diff)
        return got
