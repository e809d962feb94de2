"""``--backbone auto``: measure every candidate backbone on the user's own images and keep the best.

Which backbone transfers best depends on the data (cats sit inside ImageNet,
blood cells do not), so it is measured, not guessed: each candidate's frozen
features are computed once into the run's feature cache (the winner's are
then read back by phase 1, not computed again), a head is fitted on them in
compiled epochs (:mod:`.fasthead`), and the candidates are compared on
held-out images: k-fold cross-validation over train and val where the set is
small, else the val split. The test split is never looked at. The best
candidate's features concatenated with its best partner's (``A+B``,
:mod:`transfer.backbones.pair`) are measured too, and kept where they beat
the best single candidate by more than one standard error and that one would
not be fine-tuned. Under
``--time-limit`` a timed probe of each backbone (random weights, a few images)
estimates its features' cost, and candidates that would not fit in
:data:`MEASURE_SHARE` of the time left are left out, with the reason.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import logging
import time

import keras
import numpy as np

from .. import data, features, selection
from ..backbones import BackboneSpec, get, names, pair as pairing, resolve
from ..config import FAST_EPOCHS, FAST_PATIENCE, TrainConfig
from ..errors import ConfigError, WeightsError, first_line
from ..heads import build_model
from . import fasthead
from .phases import compile_model, deadline_of, make_optimizer
from .probe import ROOM, margin

log = logging.getLogger("transfer")

#: part of the time left under --time-limit that measuring the candidates may take (the rest trains the winner)
MEASURE_SHARE = 0.5
#: under this many images in train and val, candidates are compared by k-fold cross-validation; else on val
KFOLD_BELOW = 1000
FOLDS = 5
#: images of the timed probe that estimates a candidate's features
PROBE_IMAGES = 4


def choose(config: TrainConfig, dataset: data.Dataset, digests: dict[str, str],
           class_weight: dict[int, float] | None, deadline: float | None,
           workers=None) -> tuple[BackboneSpec, TrainConfig, dict]:
    """The winning backbone's spec, the config resolved for it, and the record of the comparison.

    ``deadline``: the run's, under --time-limit (a ``time.monotonic()``), or None.

    On a cluster every worker measures (each with its own cache) and all take the chief's choice.
    """
    specs, left_out = selection.candidates(config)
    examples = dataset.splits["train"] + dataset.splits["val"]
    end = deadline_of(deadline, MEASURE_SHARE)  # when measuring must be over
    specs, trials = _within_budget(specs, config, len(examples), end)
    kfold = len(examples) < KFOLD_BELOW
    method = (f"{FOLDS}-fold cross-validation over train and val ({len(examples)} images)" if kfold else
              f"the val split ({len(dataset.splits['val'])} images; heads trained on train)")
    log.info("--backbone auto: comparing %s by %s", ", ".join(s.name for s in specs), method)
    for spec in specs:
        trial = trials[spec.name]
        if end is not None and any(t.accuracy is not None for t in trials.values()) and _over(end, trial):
            continue  # (the first candidate is always measured: a run needs a backbone)
        _measure(spec, config, dataset, digests, class_weight, kfold, trial)
        gc.collect()
    _try_pair(trials, config, dataset, digests, class_weight, kfold, end)
    rows = [*trials.values(), *left_out]
    if not any(t.accuracy is not None for t in rows):
        raise ConfigError("--backbone auto: no candidate could be measured (" + "; ".join(
            f"{t.backbone}: {t.note}" for t in rows) + "). Name one --backbone.")
    held_out = len(examples) if kfold else len(dataset.splits["val"])
    winner = _agreed(_winner(rows, held_out, config).backbone, workers)
    for trial in rows:
        trial.chosen = trial.backbone == winner
    for line in selection.table(rows):
        log.info("  %s", line)
    log.info("--backbone auto chose %s", winner)
    spec, resolved = resolve(dataclasses.replace(config, backbone=winner, candidates=()))  # as if named
    return spec, resolved, selection.record(rows, method)


def _try_pair(trials: dict[str, selection.Trial], config: TrainConfig, dataset: data.Dataset,
              digests: dict[str, str], class_weight: dict[int, float] | None, kfold: bool,
              deadline: float | None) -> None:
    """Measure the best candidate's features concatenated with its best partner's (``A+B``, :func:`_pair_members`)
    as one more trial.

    Its features are computed anew (both networks at the pair's size), so under --time-limit it is left out
    when the two members' estimates do not fit the time left for measuring."""
    measured = [t for t in trials.values() if t.accuracy is not None and pairing.SEPARATOR not in t.backbone]
    if len(measured) < 2:
        return
    members = _pair_members(measured)
    name = pairing.SEPARATOR.join(members)
    if name in trials:  # named in --candidates: measured already
        return
    why = pairing.unpairable(*(get(member) for member in members))
    trial = trials[name] = selection.Trial(name, note=f"left out: {why}" if why else "")
    if why or (deadline is not None and _over(deadline, trial)):
        return
    try:
        spec, resolved = resolve(dataclasses.replace(config, backbone=name))
    except ConfigError as error:
        trial.note = f"left out: {first_line(error)}"
        return
    trial.image_size = resolved.image_size
    estimates = [trials[member].estimate_seconds for member in members]
    if deadline is not None and None not in estimates and time.monotonic() + sum(estimates) > deadline:
        trial.note = (f"left out: its features would take about {sum(estimates):.0f} s, over the "
                      f"{max(0.0, deadline - time.monotonic()):.0f} s left for measuring under --time-limit")
        return
    _measure(spec, config, dataset, digests, class_weight, kfold, trial)
    gc.collect()


def _pair_members(measured: list[selection.Trial]) -> list[str]:
    """The best candidate and the best of the others that can pair with it, in registry order. Where the runner-up
    cannot (its preprocessing differs: Lite1 and InceptionV3 on 250 monkey photos), the next that can is taken
    rather than no pair; where none can, the runner-up, so that the table says why they do not pair."""
    first = selection.best(measured)
    others = [t for t in measured if t is not first]
    partners = [t for t in others if not pairing.unpairable(get(first.backbone), get(t.backbone))]
    second = selection.best(partners or others)
    order = names()
    return sorted((first.backbone, second.backbone), key=order.index)


def _winner(rows: list[selection.Trial], held_out: int, config: TrainConfig) -> selection.Trial:
    """The best trial; a pair only where it beats the best single backbone by more than one standard error
    (it costs both networks' time at every prediction) and that single one would keep its head alone.

    The trials compare heads, but a single EfficientNet-Lite that leaves room is then fine-tuned, and a pair is
    not: on blood cells the pair's head scored 0.915 end to end, Lite0 fine-tuned 0.935 (BENCHMARKS.md)."""
    best = selection.best(rows)
    singles = [t for t in rows if pairing.SEPARATOR not in t.backbone and t.accuracy is not None]
    if pairing.SEPARATOR not in best.backbone or not singles:
        return best
    single = selection.best(singles)
    if best.accuracy - single.accuracy <= margin(single.accuracy, held_out):
        best.note = (f"not kept: {best.accuracy - single.accuracy:+.4f} over {single.backbone} is within one "
                     f"standard error ({margin(single.accuracy, held_out):.4f})")
        return single
    mode = _fine_tuning(single, config)
    if mode:
        best.note = (f"not kept: {single.backbone} leaves room and will be {mode}; fine-tuning beat a pair's "
                     "head where both were measured")
        return single
    return best


def _fine_tuning(single: selection.Trial, config: TrainConfig) -> str:
    """'fine-tuned' or 'probed for fine-tuning' where the run would do so with ``single`` as its backbone, else ''."""
    _, resolved = resolve(dataclasses.replace(config, backbone=single.backbone, candidates=()))
    if not resolved.fine_tunes:
        return ""
    if resolved.fine_tune == "auto":
        return "probed for fine-tuning" if 1 - single.accuracy >= ROOM else ""
    return "fine-tuned"


def _over(deadline: float, trial: selection.Trial) -> bool:
    """Whether the time for measuring ran out before ``trial`` (its note says so)."""
    if time.monotonic() < deadline:
        return False
    trial.note = "left out: the time for measuring under --time-limit ran out"
    return True


def _within_budget(specs: list[BackboneSpec], config: TrainConfig, images: int,
                   deadline: float | None) -> tuple[list[BackboneSpec], dict[str, selection.Trial]]:
    """The candidates whose estimated feature cost fits :data:`MEASURE_SHARE` of the time left, cheapest first
    (at least the cheapest one), and a trial for every candidate that fits the image size.

    ``deadline`` (a ``time.monotonic()``) is the end of measuring; None: no --time-limit, every candidate."""
    trials, sized = {}, []
    for spec in specs:
        try:
            _, resolved = resolve(dataclasses.replace(config, backbone=spec.name))
        except ConfigError as error:  # e.g. an --image-size below its minimum
            trials[spec.name] = selection.Trial(spec.name, note=f"left out: {first_line(error)}")
            continue
        trials[spec.name] = selection.Trial(spec.name, resolved.image_size)
        sized.append((spec, resolved))
    if deadline is None:
        return [spec for spec, _ in sized], trials
    for spec, resolved in sized:
        trials[spec.name].estimate_seconds = _estimate(spec, resolved, images)
    allowed, spent, kept = deadline - time.monotonic(), 0.0, []
    for spec, _ in sorted(sized, key=lambda pair: trials[pair[0].name].estimate_seconds):
        trial = trials[spec.name]
        if kept and spent + trial.estimate_seconds > allowed:
            trial.note = (f"left out: its features would take about {trial.estimate_seconds:.0f} s, over the "
                          f"{max(0.0, allowed - spent):.0f} s left for measuring under --time-limit")
            continue
        spent += trial.estimate_seconds
        kept.append(spec.name)
    return [spec for spec, _ in sized if spec.name in kept], trials  # in the candidates' order


def _estimate(spec: BackboneSpec, config: TrainConfig, images: int) -> float:
    """Seconds to compute the features of ``images`` images: a timed pass of the backbone with random weights
    (the same cost as the real ones, and nothing to fetch) over :data:`PROBE_IMAGES` images, after a first one."""
    size = config.image_size
    base = spec.build((size, size, 3), weights=None)
    batch = np.random.default_rng(0).uniform(0, 255, (PROBE_IMAGES, size, size, 3)).astype(np.float32)
    base.predict_on_batch(batch)
    started = time.perf_counter()
    base.predict_on_batch(batch)
    return (time.perf_counter() - started) / PROBE_IMAGES * images * features.views(config)


def _measure(spec: BackboneSpec, config: TrainConfig, dataset: data.Dataset, digests: dict[str, str],
             class_weight: dict[int, float] | None, kfold: bool, trial: selection.Trial) -> None:
    """Fill ``trial``: the candidate's features (cached for the run) and its heads' held-out accuracy and loss."""
    _, resolved = resolve(dataclasses.replace(config, backbone=spec.name))
    examples = dataset.splits["train"] + dataset.splits["val"]
    try:
        model = build_model(spec, resolved, len(dataset.classes))  # fetches or converts its weights the first time
        cache = features.frozen_phase_cache(model, resolved, digests)
        started = time.monotonic()
        x = cache.features(examples)
    except WeightsError as error:
        trial.note = f"left out: {first_line(error)}"
        return
    trial.feature_seconds = round(time.monotonic() - started, 2)
    if not cache.computed:
        trial.note = "features from the cache"
    y = np.array([e.label for e in examples], np.int32)
    held_out = _folds(y, config.seed) if kfold else [np.arange(len(dataset.splits["train"]), len(examples))]
    scores = _fit_heads(features.head_top(model), x, y, held_out, resolved, class_weight)
    trial.accuracy = round(float(np.average([s[0] for s in scores], weights=[len(f) for f in held_out])), 4)
    trial.loss = round(float(np.average([s[1] for s in scores], weights=[len(f) for f in held_out])), 4)
    log.info("  %s: accuracy %.4f, loss %.4f (features %.1f s)", spec.name, trial.accuracy, trial.loss,
             trial.feature_seconds)


def _folds(y: np.ndarray, seed: int) -> list[np.ndarray]:
    """:data:`FOLDS` held-out index sets, each class spread evenly over them, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), np.int64)
    for label in np.unique(y):
        rows = np.flatnonzero(y == label)
        fold[rng.permutation(rows)] = np.arange(len(rows)) % FOLDS
    return [np.flatnonzero(fold == k) for k in range(FOLDS) if np.any(fold == k)]


def _fit_heads(top: keras.Model, x: np.ndarray, y: np.ndarray, held_out: list[np.ndarray], config: TrainConfig,
               class_weight: dict[int, float] | None) -> list[tuple[float, float]]:
    """For each set of ``held_out`` rows, a fresh head (``top``'s layers, newly initialized with the run's seed)
    fitted as phase 1 fits it on every other row; its (accuracy, loss) there at its best epoch on ``config.monitor``.
    One head and one compiled epoch serve every set, each fit starting from the same weights."""
    keras.utils.set_random_seed(config.seed)
    head = keras.models.clone_model(top)
    compile_model(head, make_optimizer(config.optimizer, config.lr, config.weight_decay), config)
    fit, scores = None, []
    for rows in held_out:
        train = np.setdiff1d(np.arange(len(y)), rows)
        arrays = fasthead.Arrays(x[train], y[train], x[rows][:, :1], y[rows])
        if fit is None:
            fit = fasthead.EpochFit(head, arrays, config.batch_size, config.seed, config.augment == "flip",
                                    class_weight, config.label_smoothing)
        else:
            fit.restart(arrays)
        scores.append(_best(head, fit, config))
    return scores


def _best(head: keras.Model, fit: "fasthead.EpochFit", config: TrainConfig) -> tuple[float, float]:
    """Epochs of ``fit`` until the run's early stopping ends them: the (val accuracy, val loss) of the best."""
    epochs = config.epochs or FAST_EPOCHS
    watch = fasthead.Watch(config.monitor, config.patience or FAST_PATIENCE, config.lr,
                           None if config.lr_schedule == "plateau" else epochs)
    best = {}
    for epoch in range(epochs):
        head.optimizer.learning_rate = watch.lr(epoch)
        logs = fit(epoch)
        watch.epoch_end(epoch, logs, head)
        best = logs if watch.best_epoch == epoch else best
        if watch.stopped:
            break
    return best["val_accuracy"], best["val_loss"]


def _agreed(name: str, workers) -> str:
    """On a cluster, the chief's choice (measurements may differ a little between workers, and so may the pair
    each measured): a vote over every registry name and every pair of them, the same list on every worker."""
    if workers is None:
        return name
    order = names()
    order += [pairing.SEPARATOR.join(two) for two in itertools.combinations(order, 2)]
    vote = np.zeros(len(order), np.int32)
    if workers.rank == 0:
        vote[order.index(name)] = 1
    return order[int(np.argmax(workers.total(vote)))]
