"""--distribute: the tf.distribute strategy a run trains under, and which worker saves it. The one place for both.

``none`` is TensorFlow's default strategy (one device). ``mirrored`` copies the
model onto every GPU of this machine (without a GPU: every logical CPU device)
and averages their gradients each step. ``multiworker`` does the same across
the machines that ``TF_CONFIG`` names (``MultiWorkerMirroredStrategy``; every
worker runs the same ``transfer train`` command). ``auto`` takes
``multiworker`` when ``TF_CONFIG`` names more than one task, ``mirrored`` when
more than one GPU is visible, else ``none``.

``--batch-size`` is per replica: a step takes ``batch_size`` images on each
replica, ``batch_size * replicas`` in all.

Only the chief (task ``chief``, or ``worker`` 0 when there is none) writes the
run folder and the caches. Every other worker trains with its output and cache
folders in a temporary folder that it deletes at the end; it audits the images
and computes any feature cache itself (machines share no disk), which gives the
same split and features as the chief's, since they come from the same files.

Keras 3.15 on TensorFlow 2.21 needs two repairs for ``multiworker``, both in
:class:`_MultiWorker`; and evaluation runs on a one-device copy of the model
(:func:`local`), cached features are computed on this worker's batches alone
(:func:`predict_on_batch`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
import weakref

from ..config import TrainConfig
from ..errors import ConfigError, TrainingError

log = logging.getLogger("transfer")
_twins: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # distributed model -> its copy on one device


def cluster(environ=os.environ) -> tuple[dict, dict]:
    """``TF_CONFIG``'s cluster (role → addresses; empty without one) and this process's task."""
    try:
        tf_config = json.loads(environ.get("TF_CONFIG") or "{}")
        return dict(tf_config.get("cluster") or {}), dict(tf_config.get("task") or {})
    except (ValueError, AttributeError, TypeError):
        raise ConfigError('TF_CONFIG is not a JSON object like {"cluster": {"worker": ["host:port", ...]}, '
                          '"task": {"type": "worker", "index": 0}}; fix or unset it.') from None


def is_chief(environ=os.environ) -> bool:
    """Whether this process writes the run: the ``chief`` task, or ``worker`` 0 of a cluster without one."""
    nodes, task = cluster(environ)
    role = task.get("type", "chief" if "chief" in nodes else "worker")
    return role == "chief" or (role == "worker" and "chief" not in nodes and int(task.get("index", 0)) == 0)


def choose(mode: str, gpus: int, environ=os.environ) -> str:
    """What ``--distribute mode`` means here: none, mirrored or multiworker."""
    nodes, task = cluster(environ)
    tasks = sum(len(addresses) for addresses in nodes.values())
    if mode == "auto":
        return "multiworker" if tasks > 1 else "mirrored" if gpus > 1 else "none"
    if mode == "multiworker" and (tasks < 2 or not task):
        raise ConfigError("--distribute multiworker needs TF_CONFIG naming a cluster of two or more tasks and this "
                          "process's task, e.g. TF_CONFIG='{\"cluster\": {\"worker\": [\"host1:12345\", "
                          "\"host2:12345\"]}, \"task\": {\"type\": \"worker\", \"index\": 0}}'; see the README, "
                          "\"Several GPUs or machines\".")
    return mode


def check(config: TrainConfig, resume: bool, environ=os.environ) -> None:
    """Options that workers could not agree on: each must stop after the same step, or the others wait forever."""
    if choose(config.distribute, 0, environ) != "multiworker":
        return
    for option, given in (("--time-limit", config.time_limit), ("--resume", resume)):
        if given:
            raise ConfigError(f"{option} is not supported with --distribute multiworker: workers would stop at "
                              f"different steps. Leave {option} out, or train on one machine.")


def strategy(mode: str, environ=os.environ):
    """The strategy for ``--distribute mode``; the log says how many replicas and workers take part.

    Made before TensorFlow runs anything: ``MultiWorkerMirroredStrategy`` must
    configure the runtime's collectives first.
    """
    import tensorflow as tf

    chosen = choose(mode, len(tf.config.list_physical_devices("GPU")), environ)
    if chosen == "none":
        return tf.distribute.get_strategy()
    if chosen == "multiworker":
        made, workers = _multi_worker()(), sum(len(a) for a in cluster(environ)[0].values())
    else:
        devices = [d.name for d in tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")]
        made, workers = tf.distribute.MirroredStrategy(devices), 1
    log.info("--distribute %s: %d replica(s) on %d worker(s); this one is %s; a step takes --batch-size images per "
             "replica", chosen, made.num_replicas_in_sync, workers, "the chief" if is_chief(environ) else "not the chief")
    return made


@contextlib.contextmanager
def placed(config: TrainConfig, environ=os.environ):
    """``config`` as this worker trains it: on the chief unchanged; on another worker with its run and cache
    folders in a temporary folder, deleted afterwards, so that it writes nothing the chief's run could read."""
    if is_chief(environ) or choose(config.distribute, 0, environ) != "multiworker":
        yield config
        return
    scratch = tempfile.mkdtemp(prefix="transfer-worker-")
    log.info("not the chief: this worker's run folder and caches go to %s, deleted when it ends; the chief "
             "saves the run", scratch)
    try:
        yield dataclasses.replace(config, output_dir=os.path.join(scratch, "models"),
                                  cache_dir=os.path.join(scratch, "cache"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def worker_lost(strategy, staging: str):
    """A worker that died (killed, preempted) stops the others with a TensorFlow error that names it:
    say so in one line, and where this worker's partial run is."""
    import tensorflow as tf

    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.AbortedError) as error:
        if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            raise
        task = cluster()[1]
        this = f"/job:{task.get('type')}/replica:0/task:{task.get('index')}"  # named too, as where it waited
        lost = sorted(set(re.findall(r"/job:\w+/replica:\d+/task:\d+", error.message)) - {this}) or ["a worker"]
        raise TrainingError(f"{', '.join(lost)} of the cluster stopped, so training stopped here too; what this "
                            f"worker wrote is in {staging!r}. Start every worker again (the chief with --overwrite)."
                            ) from None


def global_batch(config: TrainConfig, strategy) -> TrainConfig:
    """``config`` with the batch of one step over all replicas: what the input pipelines batch."""
    return dataclasses.replace(config, batch_size=config.batch_size * strategy.num_replicas_in_sync)


def sharded(ds):
    """Training batches, split among workers by element (FILE sharding needs file-backed datasets)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def evaluate(model, ds) -> dict[str, float]:
    """``model.evaluate`` on one device (:func:`local`): every worker gets the exact metrics of the whole set,
    and so takes the same early-stopping and learning-rate decisions."""
    return local(model).evaluate(ds, verbose=0, return_dict=True)


def local(model):
    """``model`` if it is on one device, else a copy of it on one device with its weights now.

    Keras 3.15's distributed ``evaluate`` gave other metrics than the same
    weights on one device (9 images in batches of 8, two workers), and every
    step of it is a collective; a copy gives exactly what the weights give.
    """
    import keras

    if model.distribute_strategy.num_replicas_in_sync == 1:
        return model
    twin = _twins.get(model)
    if twin is None:  # made once per model: its compiled evaluation is then traced once, not every epoch
        twin = _twins[model] = keras.models.clone_model(model)
        twin.compile(loss=model.loss, metrics=["accuracy"])
    twin.set_weights(model.get_weights())
    return twin


def finished(model, *caches):
    """After training: the model, and the trained top of each feature cache, on one device (:func:`local`), so
    that the evaluation, the report and the saving that follow, and the caller, need no other worker."""
    for cache in caches:
        if cache is not None:
            cache.top = local(cache.top)
    return local(model)


def predict_on_batch(model, batch):
    """``model.predict_on_batch`` of this worker's ``batch`` alone (under ``multiworker`` Keras' own returns
    every worker's rows, one batch after another)."""
    import tensorflow as tf

    if isinstance(model.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return model(batch, training=False)
    return model.predict_on_batch(batch)


def _multi_worker():
    """``MultiWorkerMirroredStrategy``, repaired for Keras 3.15's ``fit``, which asks it to ``reduce``

    - the first batch (a tuple of per-replica tensors), only to learn its shapes
      (keras-team/keras#20585): a tuple cannot be all-reduced, so it gets this
      worker's batch, which has the same shapes;
    - each step's scalar metrics with ``axis=0``, which a scalar has not: they are
      averaged over the replicas instead, which is what ``axis=0`` means for them.
    """
    import tensorflow as tf

    class _MultiWorker(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op, value, axis):
            if isinstance(value, (tuple, list, dict)):
                return tf.nest.map_structure(lambda v: self.experimental_local_results(v)[0], value)
            if axis is not None and self.experimental_local_results(value)[0].shape.rank == 0:
                axis = None
            return super().reduce(reduce_op, value, axis)

    return _MultiWorker
