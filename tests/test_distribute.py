"""--distribute: two worker processes on 127.0.0.1 train one run; a run mirrored over two CPU replicas; bad choices.

The workers are real ``transfer train`` processes joined by ``TF_CONFIG``, as on
two machines. There is no second GPU here: the mirrored run splits the CPU into
two logical devices before TensorFlow starts (a wrapper around the CLI), which
``MirroredStrategy`` uses like two GPUs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from cli import main
from conftest import make_dataset
from transfer import TrainConfig, runs
from transfer.errors import ConfigError
from transfer.predict import predict
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


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


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
    cluster = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}}
        os.makedirs(tmp / f"tmp{index}")
        env = _env(TF_CONFIG=json.dumps(tf_config), TMPDIR=str(tmp / f"tmp{index}"))
        procs.append(_start([*args, "--distribute", "multiworker", "-o", tmp / f"models{index}",
                             "--cache-dir", tmp / f"cache{index}"], env))
    return procs


def _kill(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=30)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two workers and, trained the same way in one process, the one-worker run: the same global batch of 8
    (4 per replica on 2 workers)."""
    tmp = tmp_path_factory.mktemp("distribute")
    data = make_dataset(tmp / "colours", per_class=16)
    procs = []
    try:
        procs = _two_workers([*TRAIN, data, "--batch-size", "4"], tmp)
        procs.append(_start([*TRAIN, data, "--distribute", "none", "--batch-size", "8", "-o", tmp / "single"],
                            _env()))
        return tmp, [_finish(p) for p in procs]
    finally:
        _kill(procs)


def test_two_workers_train_one_run_that_only_the_chief_saves(trained):
    tmp, results = trained
    for status, output in results:
        assert status == 0, output[-3000:]
    assert "--distribute multiworker: 2 replica(s) on 2 worker(s); this one is the chief" in results[0][1]
    assert "this one is not the chief" in results[1][1]
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


def test_two_workers_cache_features_once_each_and_only_the_chief_keeps_them(tmp_path):
    """A frozen pretrained backbone: each worker computes every image's features once (with Keras, the engine
    on a GPU; phase 2's boundary cache computes the same way); the report predicts every validation image once."""
    data = make_dataset(tmp_path / "colours", per_class=16)
    procs = []
    try:
        procs = _two_workers(["train", data, "--backbone", "efficientnet_lite0", "--image-size", "64", "--epochs",
                              "3", "--fine-tune-epochs", "0", "--batch-size", "2", "--feature-engine", "keras",
                              "--name", "run"], tmp_path)
        results = [_finish(p) for p in procs]
    finally:
        _kill(procs)
    for status, output in results:
        assert status == 0, output[-3000:]
        assert "0 image(s) from the cache, 48 computed" in output, output[-3000:]
    assert os.listdir(tmp_path / "cache0" / "features") and not os.path.exists(tmp_path / "cache1")
    assert os.listdir(tmp_path / "tmp1") == []
    val = json.load(open(tmp_path / "models0" / "run" / runs.METRICS_FILE))["val"]
    matrix = val["confusion_matrix"]  # each image once, with its own label: in the pipeline's order
    assert val["accuracy"] >= 0.9 and sum(map(sum, matrix)) == 9 and sum(matrix[i][i] for i in range(3)) >= 8


def test_a_worker_that_dies_stops_the_chief_with_a_clear_error_and_its_partial_run_kept(tmp_path):
    data = make_dataset(tmp_path / "colours", per_class=8)
    history = tmp_path / "models0" / ("run" + runs.STAGING_SUFFIX) / runs.HISTORY_FILE
    procs = []
    try:
        procs = _two_workers([*TRAIN, data, "--epochs", "1000", "--patience", "1000", "--batch-size", "4"], tmp_path)
        deadline = time.monotonic() + 180
        while not (history.exists() and len(history.read_text().splitlines()) > 1):  # an epoch is done
            assert time.monotonic() < deadline and procs[0].poll() is None, "the chief never finished an epoch"
            time.sleep(0.5)
        procs[1].kill()
        status, output = _finish(procs[0], timeout=120)
    finally:
        _kill(procs)
    assert status == 1 and "Traceback" not in output, output[-3000:]
    assert "Error: /job:worker/replica:0/task:1 of the cluster stopped, so training stopped here too" in output
    assert os.path.isfile(history)  # the chief's partial run is kept


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
    (CLUSTER, ["--time-limit", "1h"], "Error: --time-limit is not supported with --distribute multiworker"),
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
    with pytest.raises(ConfigError, match="--resume is not supported with --distribute multiworker"):
        distribute.check(config, resume=True, environ=two)  # the CLI's own check of --resume comes first
    distribute.check(config, resume=True, environ={})
