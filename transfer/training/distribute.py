"""--distribute: the tf.distribute strategy a run trains under, which worker saves it, and what workers share.

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
folders in a temporary folder that it deletes at the end. Machines share no
disk, so what one worker computes reaches the others over the cluster's own
collectives (:class:`Workers`): each worker audits a part of the images and
computes the features of a part of them, and every worker gets the whole; a
resumed run's partial folder goes from the chief to the others. The workers
also agree after every batch (:func:`agreement`): a signal on any of them, or
``--time-limit`` reached on any, stops all of them after that same batch.

Before the strategy is made, every worker waits for the others in Python
(:func:`await_peers`), where a wait can say whom it awaits, end at
``--cluster-timeout`` and stop on a signal; ``TF_CONFIG`` is checked whole
before that, before TensorFlow starts (:func:`cluster`).

Keras 3.15 on TensorFlow 2.21 needs two repairs for ``multiworker``, both in
:class:`_MultiWorker`; and evaluation, and the features a worker computes
(:func:`this_worker`), run on a one-device copy of the model (:func:`local`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import tarfile
import tempfile
import threading
import time
import traceback
import weakref

import numpy as np

from ..config import TrainConfig, parse_duration
from ..errors import ConfigError, Interrupted, RunError, TrainingError
from ..runs import BACKUP_FOLDER, STAGING_SUFFIX as STAGING, latest_backup

log = logging.getLogger("transfer")
_twins: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # distributed model -> its copy on one device
#: bytes sent per collective when workers share an array (all-reduce buffers stay far from gRPC's 2 GB)
EXCHANGE_BYTES = 64 << 20
#: seconds between the lines naming the workers a cluster still waits for (:func:`await_peers`)
REPORT_EVERY = 5.0
_POLL = 0.5  # seconds between probes of the workers awaited, and the most one probe takes
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # what a gRPC client sends first
_SETTINGS = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # an empty HTTP/2 SETTINGS frame (type 4): a server's first answer


#: the tasks that train under MultiWorkerMirroredStrategy
ROLES = ("chief", "worker")
_EXAMPLE = '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'


def cluster(environ=os.environ) -> tuple[dict, dict]:
    """``TF_CONFIG``'s cluster (role → addresses; empty without one) and this process's task, checked whole.

    It is read before TensorFlow is imported (:mod:`transfer.preflight`), so a
    mistake in it is one line naming it, not TensorFlow's traceback or a wait
    for a worker that cannot exist.
    """
    text = environ.get("TF_CONFIG")
    if not text:
        return {}, {}
    try:
        tf_config = json.loads(text)
    except (ValueError, RecursionError):
        tf_config = None
    if not isinstance(tf_config, dict):
        raise ConfigError(f"TF_CONFIG is not a JSON object like {_EXAMPLE}; fix or unset it.")
    nodes, task = tf_config.get("cluster") or {}, tf_config.get("task") or {}
    _check_nodes(nodes)
    return dict(nodes), _checked_task(task, nodes)


def _bad_tf_config(problem: str) -> ConfigError:
    return ConfigError(f"TF_CONFIG: {problem}; fix or unset it (e.g. TF_CONFIG='{_EXAMPLE}').")


def _check_nodes(nodes) -> None:
    """Each role a non-empty list of distinct ``host:port`` addresses, one chief at most."""
    if not isinstance(nodes, dict):
        raise _bad_tf_config(f'"cluster" must map roles to lists of "host:port" addresses, got {json.dumps(nodes)}')
    seen: dict[str, str] = {}
    for role, addresses in nodes.items():
        if not isinstance(addresses, list) or not addresses:
            raise _bad_tf_config(f'cluster["{role}"] must be a non-empty list of "host:port" addresses, got '
                                 f"{json.dumps(addresses)}")
        if role == "chief" and len(addresses) > 1:
            raise _bad_tf_config(f'cluster["chief"] lists {len(addresses)} addresses; a cluster has one chief')
        for i, address in enumerate(addresses):
            where = f'cluster["{role}"][{i}]'
            if _host_port(address) is None:
                raise _bad_tf_config(f'{where} is {json.dumps(address)}, not "host:port" with a port from 1 to 65535')
            if address.lower() in seen:
                raise _bad_tf_config(f"{where} {address} is also {seen[address.lower()]}: each task needs its own "
                                     "address")
            seen[address.lower()] = where


def _host_port(address) -> tuple[str, int] | None:
    """``host:port`` (``[v6]:port``) as (host, port), or None when it is not one."""
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]/]+):(\d{1,5})", address) if isinstance(address, str) else None
    if not match or not 0 < int(match[2]) < 65536:
        return None
    return match[1].strip("[]"), int(match[2])


def _checked_task(task, nodes: dict) -> dict:
    """The task, its index a number in range of its role's addresses."""
    if not isinstance(task, dict):
        raise _bad_tf_config(f'"task" must be an object like {{"type": "worker", "index": 0}}, got {json.dumps(task)}')
    if not task:
        return {}
    role, index = task.get("type"), task.get("index", 0)
    if role not in nodes:
        raise _bad_tf_config(f"the task type {json.dumps(role)} is not a role of the cluster "
                             f"({', '.join(nodes) or 'it has none'})")
    if isinstance(index, str) and index.isdigit():
        index = int(index)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(nodes[role]):
        raise _bad_tf_config(f'the task index {json.dumps(index)} is out of range: cluster["{role}"] has '
                             f"{len(nodes[role])} address(es), so the index is from 0 to {len(nodes[role]) - 1}")
    return {**task, "index": index}


def is_chief(environ=os.environ) -> bool:
    """Whether this process writes the run: the ``chief`` task, or ``worker`` 0 of a cluster without one."""
    nodes, task = cluster(environ)
    role = task.get("type", "chief" if "chief" in nodes else "worker")
    return role == "chief" or (role == "worker" and "chief" not in nodes and int(task.get("index", 0)) == 0)


def choose(mode: str, gpus: int, environ=os.environ) -> str:
    """What ``--distribute mode`` means here: none, mirrored or multiworker."""
    nodes, task = cluster(environ)
    tasks = sum(len(addresses) for addresses in nodes.values())
    if mode == "auto":  # a cluster it picks must be whole too
        mode = "multiworker" if tasks > 1 else "mirrored" if gpus > 1 else "none"
    if mode == "multiworker" and set(nodes) - set(ROLES):
        raise _bad_tf_config(f"the cluster has {', '.join(sorted(set(nodes) - set(ROLES)))} tasks, and --distribute "
                             "multiworker trains on chief and worker tasks only (list the machines under \"worker\")")
    if mode == "multiworker" and (tasks < 2 or not task):
        raise ConfigError("--distribute multiworker needs TF_CONFIG naming a cluster of two or more tasks and this "
                          f"process's task, e.g. TF_CONFIG='{_EXAMPLE}'; see docs/scale.md, \"Several GPUs or machines\".")
    return mode


def local_cluster(workers: int) -> list[dict]:
    """``TF_CONFIG`` for each of ``workers`` processes on this machine (free ports on 127.0.0.1), worker 0 the chief:
    to try ``--distribute multiworker`` here before a real cluster (the tests and the benchmark do)."""
    sockets = [socket.socket() for _ in range(workers)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    addresses = [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]
    for s in sockets:
        s.close()
    return [{"cluster": {"worker": addresses}, "task": {"type": "worker", "index": i}} for i in range(workers)]


def writes_run(config: TrainConfig, environ=os.environ) -> bool:
    """Whether this process writes ``config``'s run folder: False only on a worker of a cluster that is not its chief
    (which writes into a temporary folder instead, and on ``--resume`` gets the chief's partial run)."""
    return choose(config.distribute, 0, environ) != "multiworker" or is_chief(environ)  # choose: checks TF_CONFIG


def strategy(mode: str, cluster_timeout: float | None = None, environ=os.environ):
    """The strategy for ``--distribute mode``; the log says how many replicas and workers take part.

    Made before TensorFlow runs anything: ``MultiWorkerMirroredStrategy`` must
    configure the runtime's collectives first. It is made once every other
    worker answers (:func:`await_peers`, at most ``cluster_timeout`` seconds).
    """
    import tensorflow as tf

    chosen = choose(mode, len(tf.config.list_physical_devices("GPU")), environ)
    if chosen == "none":
        return tf.distribute.get_strategy()
    if chosen == "multiworker":
        await_peers(cluster_timeout, environ)
        made, workers = _multi_worker()(), sum(len(a) for a in cluster(environ)[0].values())
        _reclaim_sigterm()
    else:
        devices = [d.name for d in tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")]
        made, workers = tf.distribute.MirroredStrategy(devices), 1
    log.info("--distribute %s: %d replica(s) on %d worker(s); this one is %s; a step takes --batch-size images per "
             "replica", chosen, made.num_replicas_in_sync, workers, "the chief" if is_chief(environ) else "not the chief")
    return made


def _reclaim_sigterm() -> None:
    """TensorFlow's preemption notifier takes SIGTERM as the strategy starts, and ignores it: a worker could not be
    stopped. Give SIGTERM back to Python's handler (the default, until :func:`.interrupts.handled`)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.getsignal(signal.SIGTERM) or signal.SIG_DFL)


def await_cluster(config: TrainConfig, environ=os.environ) -> None:
    """:func:`await_peers` for a run that trains on a cluster, called by the CLI before TensorFlow is imported: the
    wait and its lines start at once rather than after TensorFlow's start-up (about 5 s), and a worker that never
    comes, a port that cannot be listened on or a Ctrl-C during the wait cost no start-up. :func:`strategy` waits
    again, briefly: the others answer by then, or soon after their own start-up."""
    if choose(config.distribute, 0, environ) == "multiworker":  # of the modes, only "auto" without a cluster reads GPUs
        await_peers(parse_duration(config.cluster_timeout, "--cluster-timeout"), environ)


def await_peers(timeout: float | None, environ=os.environ) -> None:
    """Return once every other task of ``TF_CONFIG`` answers on its port as a worker; this one's answers meanwhile.

    ``MultiWorkerMirroredStrategy`` waits for missing workers in TensorFlow's
    C++ with the GIL held: silently, deaf to Ctrl-C and SIGTERM, for up to an
    hour. This wait comes first, in Python: every :data:`REPORT_EVERY` seconds
    it names the tasks it awaits, after ``timeout`` seconds (None: never) it
    stops with an error naming them, and a signal stops it at once
    (:class:`Interrupted`: 130 or 143). This task listens on its own port
    meanwhile (:func:`_listening`), and closes it before TensorFlow's server
    takes it, so that every worker sees the others in whatever order they start.
    """
    from .interrupts import handled

    nodes, task = cluster(environ)
    own = nodes[task["type"]][task["index"]]
    missing = {f"{role} {i} at {address}": address for role in ROLES
               for i, address in enumerate(nodes.get(role, [])) if address != own}
    with _listening(own), handled() as stop:
        try:
            _wait(missing, time.monotonic(), timeout)
        except KeyboardInterrupt:
            raise Interrupted(f"Interrupted while waiting for the cluster ({', '.join(missing)} not started); "
                              "nothing was trained.", stop.status) from None


def _wait(missing: dict[str, str], started: float, timeout: float | None) -> None:
    """Probe the ``missing`` tasks (name → address), dropping each that answers, until none is left."""
    reported = -math.inf
    while True:
        reasons = {name: _unreachable(address) for name, address in missing.items()}
        for name in [name for name, reason in reasons.items() if reason is None]:
            del missing[name], reasons[name]
        if not missing:
            return
        waited = time.monotonic() - started
        awaited = ", ".join(f"{name} ({reason})" for name, reason in reasons.items())
        if timeout is not None and waited >= timeout:
            raise TrainingError(f"the cluster did not start within --cluster-timeout {timeout:g}s: no answer from "
                                f"{awaited}. Start the same transfer train command there with its own TF_CONFIG task, "
                                "check that the port is open between the machines, or give a longer --cluster-timeout.")
        if waited - reported >= REPORT_EVERY:
            reported = waited
            limit = f" of --cluster-timeout {timeout:g}s" if timeout is not None else ""
            log.info("waiting for the cluster (%.0fs%s): %s", waited, limit, awaited)
        time.sleep(_POLL)


def _unreachable(address: str) -> str | None:
    """Why no worker answers at ``address`` (host:port), or None when one does: TensorFlow's gRPC server, or
    another worker's :func:`_listening`, each of which answers HTTP/2's opening with a SETTINGS frame."""
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=_POLL) as probe:
            probe.sendall(_HTTP2_PREFACE + _SETTINGS)
            answer = probe.recv(len(_SETTINGS))
    except (socket.timeout, TimeoutError):
        return "no answer"
    except socket.gaierror:
        return "unknown host"
    except ConnectionRefusedError:
        return "nothing listens there yet"
    except OSError as error:
        return error.strerror or type(error).__name__
    return None if answer[3:4] == _SETTINGS[3:4] else "something listens there, but not a worker"


@contextlib.contextmanager
def _listening(address: str):
    """This task's port (every interface, as TensorFlow's server) answering the others' probes, in a thread so that
    an answer never waits for this task's own probes."""
    port = _host_port(address)[1]
    try:
        try:
            server = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
        except (OSError, ValueError):  # no IPv6 here
            server = socket.create_server(("", port))
    except OSError as error:
        raise ConfigError(f"TF_CONFIG: this task's address {address} names port {port}, which this machine cannot "
                          f"listen on ({error.strerror or error}); give this task a free port in every worker's "
                          "TF_CONFIG.") from None
    done = threading.Event()
    answering = threading.Thread(target=_answer, args=(server, done), daemon=True)
    answering.start()
    try:
        yield
    finally:
        done.set()
        answering.join()
        server.close()


def _answer(server: socket.socket, done: threading.Event) -> None:
    """Answer each probe as TensorFlow's server will (:func:`_unreachable`) until ``done``."""
    server.settimeout(_POLL / 5)
    while not done.is_set():
        with contextlib.suppress(OSError):  # none came (a timeout), or one already gone
            with server.accept()[0] as probe:
                probe.settimeout(_POLL)
                probe.recv(len(_HTTP2_PREFACE + _SETTINGS))  # read before closing: unread bytes would reset it
                probe.sendall(_SETTINGS)


@contextlib.contextmanager
def scratch(config: TrainConfig, environ=os.environ):
    """A temporary folder for a worker that does not write the run (None for one that does), deleted afterwards."""
    if writes_run(config, environ):
        yield None
        return
    folder = tempfile.mkdtemp(prefix="transfer-worker-")
    log.info("not the chief: this worker's run folder and caches go to %s, deleted when it ends; the chief "
             "saves the run", folder)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def place(config: TrainConfig, folder: str | None) -> TrainConfig:
    """``config`` as this worker trains it: unchanged, or with its run and cache folders in ``folder``
    (:func:`scratch`), so that it writes nothing the chief's run could read."""
    if folder is None:
        return config
    return dataclasses.replace(config, output_dir=os.path.join(folder, "models"),
                               cache_dir=os.path.join(folder, "cache"))


def share_partial_run(config: TrainConfig, folder: str | None, workers: "Workers | None") -> TrainConfig:
    """``--resume`` on a cluster: the chief sends its unfinished run (without the older backups) to every worker,
    which puts it in its temporary ``folder``, so that every worker resumes from the same epoch and weights.

    Returns ``config`` with the output folder this worker resumes from. A chief with
    nothing to continue sends nothing; the others then stop, and it says why.
    """
    if workers is None:
        return config
    if config.name is None:
        raise ConfigError("--resume continues the unfinished run named by --name; give its --name.")
    staging = os.path.join(config.output_dir, config.name + STAGING)
    sent = workers.gather(_pack(staging) if folder is None else b"")[0]  # rank 0 is the chief
    if folder is None:
        return config
    if not sent:
        raise RunError(f"--resume: the chief has no unfinished run {config.name!r} to continue (its own message says "
                       "why); start every worker again without --resume.")
    placed = place(config, folder)
    with tarfile.open(fileobj=io.BytesIO(sent)) as archive:
        archive.extractall(os.path.join(placed.output_dir, config.name + STAGING), filter="data")
    log.info("--resume: received the chief's unfinished run (%.1f MB)", len(sent) / 1e6)
    return placed


def _pack(staging: str) -> bytes:
    """The partial run folder as a tar archive in memory: its files and its newest backup (empty: none to send)."""
    newest = latest_backup(staging) if os.path.isdir(staging) else None
    if newest is None:
        return b""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name in sorted(os.listdir(staging)):
            if name != BACKUP_FOLDER:
                archive.add(os.path.join(staging, name), name)
        archive.add(newest, os.path.relpath(newest, staging))
    return buffer.getvalue()


@contextlib.contextmanager
def worker_lost(strategy):
    """A worker that died (killed, preempted, stopped by an error) stops the others, at their next collective, with
    a TensorFlow error that names it: say so in one line, and how to continue.

    The frames the error passed through are cleared first: TensorFlow's eager all-reduce leaves its thread pool
    open when the all-reduce fails, and a pool still held there is closed only as the interpreter exits, after its
    pipe, which prints a traceback under the one line (``Exception ignored in: Pool.__del__ ... Bad file
    descriptor``). Cleared, it is closed here."""
    import tensorflow as tf

    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.AbortedError) as error:
        if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            raise
        _release_frames(error)
        task = cluster()[1]
        this = f"/job:{task.get('type')}/replica:0/task:{task.get('index')}"  # named too, as where it waited
        lost = sorted(set(re.findall(r"/job:\w+/replica:\d+/task:\d+", error.message)) - {this}) or ["a worker"]
        raise TrainingError(f"{', '.join(lost)} of the cluster stopped, so training stopped here too. Start every "
                            "worker again with the same command and --resume to continue from the chief's last "
                            "finished epoch (or --overwrite to start over).") from None


def _release_frames(error: BaseException) -> None:
    """Clear the finished frames of ``error``'s traceback and of the errors it was raised from (what they held is
    freed now rather than by the collector)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__


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


def this_worker(model):
    """``model`` to run on this worker's batches alone (cached features): itself, or under ``multiworker`` its
    one-device copy (:func:`local`). ``mirrored`` keeps the model: its ``predict_on_batch`` splits the batch
    over this machine's GPUs."""
    import tensorflow as tf

    return local(model) if isinstance(model.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy) else model


def local(model):
    """``model`` if it is on one device, else a copy of it on one device with its weights now.

    Keras 3.15's distributed ``evaluate`` gave other metrics than the same
    weights on one device (9 images in batches of 8, two workers), and every
    step of it is a collective; a copy gives exactly what the weights give.
    Its ``predict_on_batch`` returns every worker's rows, and the model called
    eagerly took 14 s for the first batch of EfficientNet-Lite0's features; the
    copy's takes this worker's batch, compiled.
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


def workers(strategy) -> "Workers | None":
    """The cluster's workers, for sharing what one of them computes; None when this process trains alone."""
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return None
    return Workers(strategy, *rank())


def rank(environ=os.environ) -> tuple[int, int]:
    """This task's place among the cluster's training tasks (the chief first, then the workers), and their number."""
    nodes, task = cluster(environ)
    tasks = [(role, i) for role in ("chief", "worker") for i in range(len(nodes.get(role, [])))]
    return tasks.index((task.get("type"), int(task.get("index", 0)))), len(tasks)


class Workers:
    """The workers of a cluster as the audit, the feature caches and resume see them: this one's ``rank`` (the
    chief's is 0), their ``count``, and two collectives that every worker must call in the same order.

    Sharing is an all-reduce: each worker fills its own part of an array of
    zeros, and the sum over the workers is the whole array, on every worker.
    """

    def __init__(self, strategy, rank: int, count: int):
        self.strategy, self.rank, self.count = strategy, rank, count

    def mine(self, items: list) -> list:
        """This worker's share of ``items`` (every worker has the same list): every ``count``-th from its rank."""
        return items[self.rank::self.count]

    def total(self, array: np.ndarray) -> np.ndarray:
        """The sum of ``array`` (the same shape and dtype on every worker) over the workers, in parts of
        :data:`EXCHANGE_BYTES`."""
        import tensorflow as tf

        flat = np.ascontiguousarray(array).reshape(-1)
        summed = np.empty_like(flat)
        step = max(1, EXCHANGE_BYTES // flat.itemsize)
        for start in range(0, flat.size, step):
            part = tf.constant(flat[start:start + step])
            value = self.strategy.experimental_distribute_values_from_function(lambda _: part)
            summed[start:start + step] = self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None).numpy()
        return summed.reshape(array.shape)

    def gather(self, blob: bytes) -> list[bytes]:
        """Every worker's ``blob``, in rank order, on every worker."""
        sizes = np.zeros(self.count, np.int64)
        sizes[self.rank] = len(blob)
        sizes = self.total(sizes)
        padded = (sizes + 3) // 4 * 4  # each worker's bytes fill whole int32 words: the sum is exact
        offsets = np.concatenate([[0], np.cumsum(padded)])
        words = np.zeros(int(offsets[-1]), np.uint8)
        words[offsets[self.rank]:offsets[self.rank] + len(blob)] = np.frombuffer(blob, np.uint8)
        words = self.total(words.view(np.int32)).view(np.uint8)
        return [words[offsets[i]:offsets[i] + sizes[i]].tobytes() for i in range(self.count)]


def agreement(workers: "Workers | None", stop, timer):
    """A callback that makes the workers take the same decisions, where each could take its own: after every batch
    and epoch, stop all of them when any asks to (a signal: ``stop``; ``--time-limit``: ``timer``; early stopping),
    and before every batch, the learning rate a time-decayed schedule sets (their mean). None without a cluster.

    Without it one worker would leave ``fit`` while the others wait in the next
    step's collectives for it, and a worker whose clock runs ahead would apply
    another learning rate than the others to the same mirrored weights. It also
    takes :class:`~.callbacks.StopAfterBatch`'s place on a cluster: it stops on
    the signal the workers agreed on, never on one that reached this worker
    after its vote (often inside the vote's own all-reduce), which would leave
    the others waiting in the next step for a worker that has gone.
    """
    if workers is None:
        return None
    import keras

    class Agreement(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if timer is not None and timer.lr is not None:
                rate = np.array([float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))])
                self.model.optimizer.learning_rate = float(workers.total(rate)[0]) / workers.count

        def on_train_batch_end(self, batch, logs=None):
            self._agree()

        def on_epoch_end(self, epoch, logs=None):
            self._agree()

        def _agree(self):
            asked = np.array([bool(timer and timer.reached), bool(self.model.stop_training),
                              stop.signum == signal.SIGINT, stop.signum == signal.SIGTERM], np.int32)
            reached, stopping, interrupted, terminated = workers.total(asked) > 0
            if timer is not None:
                timer.reached = bool(reached)
            self.model.stop_training = bool(stopping)
            if not (interrupted or terminated):
                return  # a signal that came after this worker's vote counts at the next one, on every worker
            if stop.signum is None:  # another worker's signal stops this one too
                stop.signum = signal.SIGINT if interrupted else signal.SIGTERM
                log.info("another worker was asked to stop: stopping after this batch")
            raise KeyboardInterrupt

    return Agreement()


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
