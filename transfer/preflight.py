"""Every check of a training run that needs no TensorFlow, made before TensorFlow is imported.

Importing TensorFlow takes seconds; a bad option, a run name that exists, a
destination inside the dataset or a model that cannot fit in memory should
fail at once, and before anything is allocated. The CLI calls :func:`check`
before importing the trainer; :func:`transfer.train` calls it again, so library
callers get the same errors. Importing this module must not import TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import os

from . import backbones, data, outputs, runs, selection
from .backbones import BackboneSpec
from .config import TrainConfig, default, option_name, physical_memory
from .errors import ConfigError, RunError
from .training import distribute

#: bytes kept per value of a batch's images while training, at the least: a network's first layers alone hold
#: several times its input (real networks hold far more, so this only refuses what cannot possibly fit)
ACTIVATION_FACTOR = 16
#: float32 copies of each parameter while training: the weights, their gradients and two optimizer slots
PARAM_COPIES = 4


#: files of each kind (added, removed, modified) that a refused --resume names
SHOWN = 5
#: settings that say where a run goes or how it reports, not what it trains: --resume takes them as given
NOT_TRAINING = ("data_dir", "output_dir", "name", "overwrite", "verbose", "cache_dir", "unsafe", "cluster_timeout")


def check(config: TrainConfig, *, open_models: bool = True,
          resume: bool = False) -> tuple[BackboneSpec | None, TrainConfig]:
    """The validated config, resolved for its backbone and with its run name, and the backbone's spec.

    Raises for every problem that can be known before training: option values,
    the backbone and its options, nothing to train, memory, the run name, its
    destination and the cache folder. With ``open_models=False`` a backbone given
    as a model path is not opened (that needs Keras): its own checks wait for
    :func:`transfer.train`, and the spec returned is None. With ``resume``,
    the settings are those of the unfinished run ``config.name`` (:func:`resumed`).
    """
    config = config.validate(need_data=not resume)
    writes = distribute.writes_run(config)  # a worker that is not the chief gets its run from the chief
    if resume and writes:
        config = resumed(config)
    spec = None
    selection.check(config)  # --backbone auto: resolved for the backbone train() chooses, and checked then
    if not selection.requested(config) and (open_models or config.backbone.lower() in backbones.names() or not os.path.exists(config.backbone)):
        spec, config = backbones.resolve(config)
        check_memory(spec, config)
    if config.epochs == 0 and config.fine_tune_epochs == 0:
        raise ConfigError("--epochs and --fine-tune-epochs are both 0: nothing to train.")
    backbone = os.path.basename(os.path.normpath(spec.name if spec else config.backbone))
    config = dataclasses.replace(config, name=runs.default_name(backbone) if config.name is None else config.name)
    if writes:
        runs.RunFolder(config.output_dir, config.name, config.overwrite, data_dir=config.data_dir, resume=resume)
        outputs.check_output(config.output_dir, "--output-dir", datasets=[config.data_dir])
        if config.tensorboard:
            outputs.check_output(config.tensorboard, "--tensorboard", datasets=[config.data_dir])
    if config.data_dir:  # else a worker's --resume: the chief's run says where (train() reads it)
        data.check_layout(config.data_dir)
        data.check_cache_dir(config.cache_dir, config.data_dir)
    return spec, config


def resumed(config: TrainConfig) -> TrainConfig:
    """The settings of the unfinished run ``config.name`` in ``config.output_dir``, from its config.json.

    A setting of ``config`` that is not its default and differs from the run's
    is an error that names it: a resumed run trains as it was started. The
    dataset folder must be the same one; left out (no DATA_DIR), it is the run's.
    """
    if config.name is None:
        raise ConfigError("--resume continues the unfinished run named by --name; give its --name.")
    staging = os.path.join(config.output_dir, config.name + runs.STAGING_SUFFIX)
    try:
        with open(os.path.join(staging, runs.CONFIG_FILE), encoding="utf-8") as f:
            record = json.load(f)
        saved = TrainConfig.from_dict(record["config"])
    except FileNotFoundError:
        runs.RunFolder(config.output_dir, config.name, resume=True)  # says why there is nothing to continue
        raise
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RunError(f"--resume: {os.path.join(staging, runs.CONFIG_FILE)!r} cannot be read ({error}); "
                       "start again with --overwrite.") from None
    chief = distribute.writes_run(config)  # another worker's copy of the dataset may be elsewhere (the audit compares)
    if chief and config.data_dir and os.path.realpath(config.data_dir) != os.path.realpath(saved.data_dir):
        raise ConfigError(f"--resume: the run {config.name!r} was trained on {saved.data_dir!r}, not "
                          f"{config.data_dir!r}; give that DATA_DIR.")
    for item in dataclasses.fields(TrainConfig):
        given, was = getattr(config, item.name), getattr(saved, item.name)
        if item.name in ("backbone", "candidates") and selection.requested(config) and "backbone_choice" in record:
            continue  # the run chose its backbone when it started: it continues with it
        if item.name not in NOT_TRAINING and given != default(item.name) and given != was:
            raise ConfigError(f"--resume continues the run {config.name!r} with the settings it was started with, "
                              f"and {option_name(item.name)} was {was!r}, not {given!r}; leave "
                              f"{option_name(item.name)} out, or start again with --overwrite.")
    if chief:
        check_unchanged(staging, saved.data_dir, config.name)
    cache_dir = saved.cache_dir if config.cache_dir == default("cache_dir") else config.cache_dir  # moved, or a worker's
    # the folder asked for is the one resumed: a copied .partial's config.json names the run it was copied from
    return dataclasses.replace(saved, output_dir=config.output_dir, name=config.name, verbose=config.verbose,
                               cache_dir=cache_dir, overwrite=saved.overwrite or config.overwrite,
                               data_dir=saved.data_dir if chief or not config.data_dir else config.data_dir)


def check_unchanged(staging: str, data_dir: str, name: str) -> None:
    """Refuse to resume on a dataset whose files changed since the run started: the split would be made anew, and
    images trained on would become validation images (split.csv and config.json would describe other data)."""
    path = os.path.join(staging, runs.FINGERPRINT_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            before = json.load(f)
    except FileNotFoundError:  # a run started before fingerprints were kept
        return
    except (OSError, ValueError) as error:
        raise RunError(f"--resume: {path!r} cannot be read ({error}); start again with --overwrite.") from None
    found = data.changes(before, data.fingerprint(data_dir)) if isinstance(before, dict) else {"modified": [path]}
    if any(found.values()):
        listed = "; ".join(f"{len(paths)} {what} ({', '.join(paths[:SHOWN])}{', ...' if len(paths) > SHOWN else ''})"
                           for what, paths in found.items() if paths)
        raise RunError(f"--resume: the dataset {data_dir!r} changed since the run {name!r} started: {listed}. "
                       "Resuming would split it anew, and images trained on could become validation images. Put "
                       "the files back as they were, or start a new run on the data as it is: train without "
                       "--resume (with --overwrite to replace this unfinished run, or another --name).")


def check_memory(spec: BackboneSpec, config: TrainConfig, available: int | None = None) -> None:
    """Refuse, before anything is allocated, a run whose least possible memory use exceeds the machine's RAM."""
    available = physical_memory() if available is None else available
    batch, params = training_memory(spec, config)
    if batch + params * 4 * PARAM_COPIES > available:
        scratch = spec.kind == "scratch"
        raise ConfigError(
            f"this run needs at least {_gib(batch + params * 4 * PARAM_COPIES)} of memory, more than this machine's "
            f"{_gib(available)}: {_gib(batch)} for a batch of {config.batch_size} images of "
            f"{config.image_size}x{config.image_size} px and {_gib(params * 4 * PARAM_COPIES)} for about "
            f"{params:.3g} parameters. Lower --image-size or --batch-size{' (or --width)' if scratch else ''}.")


def training_memory(spec: BackboneSpec, config: TrainConfig) -> tuple[float, float]:
    """(bytes of one batch's activations, number of parameters), both lower bounds for a resolved config.

    A from-scratch net's filters scale with ``--width``, so its parameters grow
    with the square of it (extra ``--depth`` blocks only add to both).
    """
    scale = max(1.0, config.width) if spec.kind == "scratch" else 1.0
    batch = float(config.batch_size) * config.image_size ** 2 * 3 * 4 * ACTIVATION_FACTOR * scale
    return batch, spec.params * scale * scale


def _gib(size: float) -> str:
    return f"{size / 2**30:,.1f} GiB"
