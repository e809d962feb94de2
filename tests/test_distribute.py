"""--distribute: two worker processes on 127.0.0.1 train one run; a run mirrored over two CPU replicas; bad choices.

The workers are real ``transfer train`` processes joined by ``TF_CONFIG``, as on
two machines. There is no second GPU here: the mirrored run splits the CPU into
two logical devices before TensorFlow starts (a wrapper around the CLI), which
``MirroredStrategy`` uses like two GPUs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from cli import main
from conftest import invoke, make_dataset
from transfer import TrainConfig, runs
from transfer.data.images import load_image
from transfer.prediction import predict
from transfer.training import distribute

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ["train", "--backbone", "smallcnn", "--image-size", "32", "--augment", "none", "--epochs", "4",
         "--fine-tune-epochs", "1", "--name", "run"]
TWO_CPUS = """
import os, runpy, sys
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.argv = ["cli", *sys.argv[1:]]
runpy.run_module("cli", run_name="__main__")
"""


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT, **extra}


def _start(args, env, prefix=("-m", "cli")) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *prefix, *map(str, args)], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen, timeout=300) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def _two_workers(args, tmp) -> list[subprocess.Popen]:
    """``transfer train ARGS`` as workers 0 (the chief) and 1 of a cluster on 127.0.0.1; worker i writes
    to ``tmp/models<i>`` and ``tmp/cache<i>`` if it writes at all, and keeps its temporary files in ``tmp/tmp<i>``."""
    procs = []
    for index, tf_config in enumerate(distribute.local_cluster(2)):
        os.makedirs(tmp / f"tmp{index}", exist_ok=True)
        env = _env(TF_CONFIG=json.dumps(tf_config), TMPDIR=str(tmp / f"tmp{index}"))
        procs.append(_start([*args, "--distribute", "multiworker", "-o", tmp / f"models{index}",
                             "--cache-dir", tmp / f"cache{index}"], env))
    return procs


@contextlib.contextmanager
def _processes():
    """A list for the processes a test starts: any still running at the end (a failed test) is killed."""
    procs = []
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two workers and, trained the same way in this process meanwhile, the one-worker run: the same global batch of 8
    (4 per replica on 2 workers)."""
    tmp = tmp_path_factory.mktemp("distribute")
    data = make_dataset(tmp / "colours", per_class=16)
    with _processes() as procs:
        procs += _two_workers([*TRAIN, data, "--batch-size", "4"], tmp)
        single = invoke(*TRAIN, data, "--distribute", "none", "--batch-size", "8", "-o", tmp / "single")  # meanwhile
        assert single.returncode == 0, single.stderr[-3000:]
        return tmp, [_finish(p) for p in procs]


def test_two_workers_train_one_run_that_only_the_chief_saves(trained):
    tmp, results = trained
    for status, output in results:
        assert status == 0, output[-3000:]
    assert "--distribute multiworker: 2 replica(s) on 2 worker(s); this one is the chief" in results[0][1]
    assert "this one is not the chief" in results[1][1]
    assert "trained as a worker of the cluster; the chief saved the run" in results[1][1]
    assert os.path.isfile(tmp / "models0" / "run" / runs.MODEL_FILE)
    assert not os.path.exists(tmp / "models1") and not os.path.exists(tmp / "cache1")
    assert os.listdir(tmp / "tmp1") == []  # its temporary folder is gone too
    metrics = json.load(open(tmp / "models0" / "run" / runs.METRICS_FILE))
    assert metrics["val"]["accuracy"] >= 0.9  # chance: 1/3
    config = json.load(open(tmp / "models0" / "run" / runs.CONFIG_FILE))["config"]
    assert config["batch_size"] == 4 and config["distribute"] == "multiworker"  # per replica, as given


def test_two_workers_predict_like_one_worker_trained_the_same_way(trained, tmp_path):
    tmp, _ = trained
    fresh = make_dataset(tmp_path / "fresh", per_class=4, seed=7)

    def probabilities(run):
        return {p.path: dict(p.top_k) for p in predict(str(run), [fresh]).predictions}

    two, one = probabilities(tmp / "models0" / "run"), probabilities(tmp / "single" / "run")
    assert len(two) == 12 and two.keys() == one.keys()
    for path in two:
        assert max(two[path], key=two[path].get) == max(one[path], key=one[path].get), path
        assert all(abs(two[path][c] - one[path][c]) < 0.25 for c in two[path]), (path, two[path], one[path])


@pytest.mark.slow
def test_two_workers_share_the_audit_and_features_and_take_the_chiefs_auto_choices(tmp_path):
    """--backbone auto and --fine-tune auto on a cluster: each worker checks half of the images, every worker
    measures, all train the chief's choice and take the same fine-tuning decision (two classes no model can tell
    apart: the head leaves errors, so the probe runs), and the chief's run records both. Phase 2's boundary cache
    is computed half by each worker (with Keras, the engine on a GPU), the other half received; the chief's cache
    ends with every image, the other worker's is gone; the report predicts every validation image once, with its
    own label. (No deeper phase: it would follow only where this probe paid, by chance.)"""
    colours = {"a": (128, 128, 128), "b": (128, 128, 128), "c": (220, 30, 30)}
    data = make_dataset(tmp_path / "photos", per_class=16, colours=colours)
    with _processes() as procs:
        procs += _two_workers(["train", data, "--backbone", "auto", "--candidates", "efficientnet_lite0",
                               "--image-size", "32", "--epochs", "3", "--fine-tune", "auto", "--fine-tune-epochs",
                               "3", "--deeper-unfreeze", "none", "--batch-size", "4", "--feature-engine", "keras",
                               "--name", "run"], tmp_path)
        results = [_finish(p) for p in procs]
    for status, output in results:
        assert status == 0 and "--backbone auto chose efficientnet_lite0" in output, output[-3000:]
        assert "audit shared by 2 workers: 24 of 48 files checked here" in output, output[-3000:]
        assert "0 image(s) from the cache, 24 computed, 24 from other workers" in output, output[-3000:]
    decisions = [[line for line in output.splitlines() if re.fullmatch(r"--fine-tune auto: [a-z -]+", line)]
                 for _, output in results]
    record = json.load(open(tmp_path / "models0" / "run" / runs.CONFIG_FILE))
    assert record["config"]["backbone"] == record["backbone_choice"]["chosen"] == "efficientnet_lite0"
    probed = record["fine_tune_probe"]
    assert probed["probe_epochs"] == 3 and decisions == [[f"--fine-tune auto: {probed['decision']}"]] * 2, decisions
    assert _epochs(results[0][1]) == _epochs(results[1][1])
    features = tmp_path / "cache0" / "features"
    assert all(len(os.listdir(features / cache)) == 48 for cache in os.listdir(features))
    assert not os.path.exists(tmp_path / "cache1") and os.listdir(tmp_path / "tmp1") == []
    matrix = json.load(open(tmp_path / "models0" / "run" / runs.METRICS_FILE))["val"]["confusion_matrix"]
    assert sum(map(sum, matrix)) == 9 and matrix[2] == [0, 0, 3]  # each image once, in the pipeline's order


def _epochs(output: str) -> list[str]:
    """The epoch lines of a run's log, without their seconds."""
    return [line.rsplit("  ", 1)[0] for line in output.splitlines() if line.startswith("epoch ")]


def _one_epoch_done(procs, history) -> None:
    deadline = time.monotonic() + 180
    while not (history.exists() and len(history.read_text().splitlines()) > 1):
        assert time.monotonic() < deadline and procs[0].poll() is None, "the chief never finished an epoch"
        time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.serial  # a 2-worker cluster timed against --time-limit / a signal: alone on the machine
def test_a_killed_worker_stops_the_chief_and_every_worker_resumes_from_its_last_epoch(tmp_path):
    """kill -9 of a worker: the chief stops with one clear line and keeps its partial run; started again with
    --resume, the other worker gets that run from the chief, and both train on to --time-limit (counted over both
    starts), stopping after the same batch; each epoch is in history.csv once."""
    data = make_dataset(tmp_path / "colours", per_class=8)
    args = [*TRAIN, data, "--epochs", "1000", "--patience", "1000", "--batch-size", "4", "--time-limit", "15s"]
    history = tmp_path / "models0" / ("run" + runs.STAGING_SUFFIX) / runs.HISTORY_FILE
    with _processes() as procs:
        procs += _two_workers(args, tmp_path)
        _one_epoch_done(procs, history)
        procs[1].kill()
        status, output = _finish(procs[0], timeout=120)
        assert status == 1 and "Traceback" not in output, output[-3000:]
        assert "Error: /job:worker/replica:0/task:1 of the cluster stopped, so training stopped here too" in output
        assert "Start every worker again with the same command and --resume" in output
        assert os.path.isfile(history)  # the chief's partial run is kept
        left = set(os.listdir(tmp_path / "tmp1"))  # what the killed worker could not delete
        before = len(history.read_text().splitlines()) - 1  # epochs of the first start
        resumed = _two_workers([*args, "--resume"], tmp_path)
        procs += resumed
        results = [_finish(p) for p in resumed]
    for status, output in results:
        assert status == 0 and "resumed at epoch" in output, output[-3000:]
    assert "--resume: received the chief's unfinished run" in results[1][1]
    assert _epochs(results[0][1]) == _epochs(results[1][1])  # the same epochs, the same metrics
    run = tmp_path / "models0" / "run"
    epochs = [int(line.split(",")[0]) for line in (run / runs.HISTORY_FILE).read_text().splitlines()[1:]]
    assert epochs == list(range(len(epochs))) and len(epochs) > before  # the resumed workers trained on
    assert "head" in json.load(open(run / runs.METRICS_FILE))["time_limit_stopped"]
    assert not os.path.exists(tmp_path / "models1") and set(os.listdir(tmp_path / "tmp1")) == left


@pytest.mark.slow
@pytest.mark.serial  # a 2-worker cluster timed against --time-limit / a signal: alone on the machine
def test_ctrl_c_on_one_worker_stops_every_worker_after_the_same_batch(tmp_path):
    data = make_dataset(tmp_path / "colours", per_class=8)
    history = tmp_path / "models0" / ("run" + runs.STAGING_SUFFIX) / runs.HISTORY_FILE
    with _processes() as procs:
        procs += _two_workers([*TRAIN, data, "--epochs", "1000", "--patience", "1000", "--batch-size", "4"], tmp_path)
        _one_epoch_done(procs, history)
        procs[1].send_signal(signal.SIGINT)
        results = [_finish(p, timeout=120) for p in procs]
    for status, output in results:
        assert status == 130 and "Traceback" not in output, output[-3000:]
        assert "Continue by starting every worker again with the same command and --resume." in output
    assert "another worker was asked to stop" in results[0][1]
    assert _epochs(results[0][1]) == _epochs(results[1][1])
    rows = history.read_text().splitlines()[1:]
    assert len(rows) == len(_epochs(results[0][1]))  # every finished epoch backed up, none half-done


@pytest.mark.slow
def test_mirrored_over_two_cpu_replicas_trains_with_the_batch_size_per_replica(tmp_path):
    data = make_dataset(tmp_path / "colours", per_class=16)
    proc = _start([*TRAIN, data, "--distribute", "mirrored", "--batch-size", "4", "-o", tmp_path / "models"],
                  _env(), prefix=("-c", TWO_CPUS))
    status, output = _finish(proc)
    assert status == 0, output[-3000:]
    assert "--distribute mirrored: 2 replica(s) on 1 worker(s)" in output
    metrics = json.load(open(tmp_path / "models" / "run" / runs.METRICS_FILE))
    assert metrics["val"]["accuracy"] >= 0.9 and metrics["epochs"] == {"head": 4, "fine_tune": 1}


CLUSTER = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 1}}


@pytest.mark.parametrize("tf_config, options, message", [
    (None, [], "Error: --distribute multiworker needs TF_CONFIG naming a cluster"),
    ({"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 0}}, [],
     "Error: --distribute multiworker needs TF_CONFIG naming a cluster of two or more tasks"),
    ("[1, 2", [], "Error: TF_CONFIG is not a JSON object"),
])
def test_a_bad_combination_is_a_clear_error(runner, colours_dir, tmp_path, tf_config, options, message):
    env = {"TF_CONFIG": tf_config if isinstance(tf_config, str) or tf_config is None else json.dumps(tf_config)}
    result = runner.invoke(main, ["train", colours_dir, "--distribute", "multiworker", "-o",
                                          str(tmp_path / "models"), *options], env=env)
    assert result.exit_code == 1 and message in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not os.path.exists(tmp_path / "models")


def test_auto_and_the_chief_follow_tf_config():
    two = {"TF_CONFIG": json.dumps(CLUSTER)}
    with_chief = {"TF_CONFIG": json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:1"]},
                                           "task": {"type": "worker", "index": 0}})}
    assert distribute.choose("auto", gpus=0, environ={}) == "none"
    assert distribute.choose("auto", gpus=2, environ={}) == "mirrored"
    assert distribute.choose("auto", gpus=0, environ=two) == "multiworker"
    assert distribute.choose("none", gpus=2, environ=two) == "none"
    assert distribute.is_chief({}) and not distribute.is_chief(two) and not distribute.is_chief(with_chief)
    assert distribute.is_chief({"TF_CONFIG": json.dumps({**CLUSTER, "task": {"type": "worker", "index": 0}})})
    config = TrainConfig(data_dir="photos", distribute="auto")
    assert distribute.writes_run(config, environ={}) and not distribute.writes_run(config, environ=two)
    assert distribute.writes_run(dataclasses.replace(config, distribute="none"), environ=two)
    assert distribute.rank(two) == (1, 2) and distribute.rank(with_chief) == (1, 2)
    assert distribute.rank({"TF_CONFIG": json.dumps({**json.loads(with_chief["TF_CONFIG"]),
                                                     "task": {"type": "chief", "index": 0}})}) == (0, 2)


class _Peers:
    """``count`` simulated workers (threads) whose ``total`` sums their arrays, like the cluster's all-reduce."""

    def __init__(self, count):
        self.count, self.barrier, self.parts = count, threading.Barrier(count), [None] * count

    def worker(self, rank):
        peers = self

        class Fake(distribute.Workers):
            def total(self, array):
                peers.parts[rank] = array.copy()
                peers.barrier.wait()
                summed = sum(peers.parts)
                peers.barrier.wait()
                return summed

        return Fake(None, rank, self.count)


def test_workers_gather_every_blob_in_rank_order():
    blobs = [b"", b"a", bytes(range(256)) * 3 + b"xyz"]
    peers, got = _Peers(3), {}
    threads = [threading.Thread(target=lambda r=r: got.__setitem__(r, peers.worker(r).gather(blobs[r])))
               for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert got == {r: blobs for r in range(3)}
    assert peers.worker(1).mine(list(range(7))) == [1, 4]


def test_workers_that_see_different_files_stop_with_a_clear_error(tmp_path):
    """Two simulated workers whose copies of the dataset differ: each stops at the shared audit, before a run
    folder exists, with the same message (the CLI prints it as its one Error: line)."""
    from transfer import data
    from transfer.errors import ConfigError

    copies = [make_dataset(tmp_path / "one", per_class=4), make_dataset(tmp_path / "two", per_class=5)]
    peers, errors = _Peers(2), {}

    def scan(rank):
        try:
            data.scan(copies[rank], workers=peers.worker(rank))
        except ConfigError as error:
            errors[rank] = str(error)

    threads = [threading.Thread(target=scan, args=(rank,)) for rank in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(errors) == [0, 1], errors
    for rank, message in errors.items():
        assert message.startswith("the workers of the cluster do not see the same image files in "), message
        assert f"workers of rank [{1 - rank}] list others" in message
        assert message.endswith("give every worker the same copy of the dataset."), message


@pytest.mark.slow
def test_workers_compute_each_missing_feature_once_and_send_what_they_hold(tmp_path):
    """Two simulated workers: the chief holds 4 images' features from an earlier run and streams its cache from
    disk (a small --cache-memory); the other holds none. The 4 are sent by the chief, the rest computed once, by
    one worker each; both end with the same features, those of the backbone, and the chief's cache has them all."""
    import keras

    from transfer import backbones, data, features
    from transfer.heads import build_model

    make_dataset(tmp_path / "data", per_class=4, size=48)
    configs = [TrainConfig(data_dir=str(tmp_path / "data"), backbone="smallcnn", image_size=48,
                           augment="none", batch_size=3, verbose=0, feature_engine="keras", seed=7,
                           cache_dir=str(tmp_path / f"cache{rank}"), cache_memory=memory)
               for rank, memory in enumerate(["1K", "25%"])]
    spec, configs = backbones.resolve(configs[0])[0], [backbones.resolve(c)[1] for c in configs]
    dataset = data.scan(configs[0].data_dir, cache_dir=str(tmp_path / "audit"))
    examples, digests = dataset.splits["train"], {c.path: c.digest for c in dataset.report.used}

    def cache(rank, workers=None):
        keras.utils.set_random_seed(7)  # the same weights on every worker
        return features.frozen_phase_cache(build_model(spec, configs[rank], 3), configs[rank], digests, workers)

    cache(0).prepare(examples[:4])  # the chief's earlier run
    peers = _Peers(2)
    caches = [cache(rank, peers.worker(rank)) for rank in range(2)]
    threads = [threading.Thread(target=c.prepare, args=(examples,)) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    chief, other = caches
    rest = len(examples) - 4
    assert (chief.hits, other.hits) == (4, 0) and chief.computed + other.computed == rest
    assert abs(chief.computed - other.computed) <= 1
    assert (chief.received, other.received) == (other.computed, 4 + chief.computed)
    assert chief.in_memory is False and len(os.listdir(chief.folder)) == len(examples)
    for c in caches:
        c.workers = None  # read back alone
    expected = chief.extractor.predict(np.stack([load_image(e.path, (48, 48), "squash") for e in examples]),
                                       verbose=0)
    for c in caches:
        np.testing.assert_allclose(c.features(examples)[:, 0], expected, atol=1e-5)


def test_a_lost_worker_is_one_line_and_what_the_failed_collective_held_is_closed_at_once(monkeypatch):
    """TensorFlow's eager all-reduce leaves a thread pool open when a worker is lost; held by the error's frames, it
    was closed only at the interpreter's exit, after its pipe, printing a traceback under the chief's one line."""
    import tensorflow as tf

    from transfer.errors import TrainingError

    monkeypatch.setenv("TF_CONFIG", json.dumps({**CLUSTER, "task": {"type": "worker", "index": 0}}))
    closed = []

    class Pool:
        def __del__(self):
            closed.append(True)

    def all_reduce():
        pool = Pool()  # noqa: F841  (held by this frame, as by the pool's own map())
        error = tf.errors.UnavailableError(None, None, "Error reported from /job:worker/task:1: unhealthy tasks: "
                                                       "/job:worker/replica:0/task:1 /job:worker/replica:0/task:0")
        raise error  # the frame holds its error, whose traceback holds the frame: a cycle, as in the pool's map()

    strategy = object.__new__(tf.distribute.MultiWorkerMirroredStrategy)  # only its type is read
    gc.disable()  # a cycle is otherwise freed whenever the collector happens to run
    try:
        with pytest.raises(TrainingError, match=r"^/job:worker/replica:0/task:1 of the cluster stopped, so training "):
            with distribute.worker_lost(strategy):
                all_reduce()
        assert closed == [True]
    finally:
        gc.enable()


def test_a_signal_that_comes_during_the_vote_stops_every_worker_at_the_next_vote():
    """Ctrl-C often reaches a worker while it waits in the vote's all-reduce: stopping on it at once would leave the
    other workers waiting in the next step for a worker that has gone (the chief then fails on its heartbeat)."""
    from transfer.training.interrupts import StopRequest

    stop = StopRequest()

    class Voters:  # two workers: the other votes 0; the signal arrives here while the sum is taken
        count = 1

        def total(self, asked):
            stop.signum = stop.signum or signal.SIGINT
            return asked

    class Model:
        stop_training = False

    agreement = distribute.agreement(Voters(), stop, None)
    agreement.set_model(Model())
    agreement.on_train_batch_end(0)  # this vote said "go on", on every worker: this one goes on with them
    assert stop.signum == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):
        agreement.on_train_batch_end(1)  # the next vote carries it: every worker stops after the same batch
