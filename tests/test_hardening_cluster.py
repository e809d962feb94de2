"""A cluster that does not come together: TF_CONFIG checked before TensorFlow starts, the wait for missing workers
says whom it awaits, ends at --cluster-timeout, and stops at once on Ctrl-C or SIGTERM; a late worker still joins."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import make_dataset
from transfer.errors import ConfigError
from transfer.training import distribute

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ["train", "--backbone", "smallcnn", "--image-size", "32", "--augment", "none", "--epochs", "1",
         "--fine-tune-epochs", "0", "--name", "run", "--distribute", "multiworker"]


def _start(args, tf_config, tmp_path) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT,
           "TF_CONFIG": tf_config if isinstance(tf_config, str) else json.dumps(tf_config)}
    args = [*args, "-o", tmp_path / "models", "--cache-dir", tmp_path / "cache"]
    return subprocess.Popen([sys.executable, "-m", "cli", *map(str, args)], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc, timeout=120) -> tuple[int, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out + err


def _await_line(proc, text: str, timeout=120) -> str:
    """stderr up to the first line holding ``text`` (the process keeps running)."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen.append(line)
        if text in line:
            return "".join(seen)
        assert line, "".join(seen)[-3000:]
    raise AssertionError("".join(seen)[-3000:])


@pytest.fixture
def colours(tmp_path):
    return make_dataset(tmp_path / "colours", per_class=4)


@pytest.mark.slow
def test_a_missing_worker_is_named_every_few_seconds_until_cluster_timeout(colours, tmp_path):
    tf_config = distribute.local_cluster(2)[0]
    missing = tf_config["cluster"]["worker"][1]
    started = time.monotonic()
    status, output = _finish(_start([*TRAIN, colours, "--cluster-timeout", "7s"], tf_config, tmp_path))
    assert status == 1 and "Traceback" not in output, output[-3000:]
    waits = [line for line in output.splitlines() if line.startswith("waiting for the cluster")]
    assert len(waits) == 2 and all(f"worker 1 at {missing} (nothing listens there yet)" in w for w in waits), output
    assert len(output.strip().splitlines()) == 3, output  # the waits and the error: no device line, no TensorFlow
    assert "0s of --cluster-timeout 7s" in waits[0] and "5s of --cluster-timeout 7s" in waits[1]
    error = output.strip().splitlines()[-1]
    assert error.startswith(f"Error: the cluster did not start within --cluster-timeout 7s: no answer from worker 1 "
                            f"at {missing}") and "give a longer --cluster-timeout" in error
    assert time.monotonic() - started < 60
    assert not os.path.exists(tmp_path / "models")


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.slow
def test_a_signal_during_the_wait_ends_it_within_seconds(colours, tmp_path, signum, status):
    tf_config = distribute.local_cluster(2)[1]  # worker 1 waits for the chief
    chief = tf_config["cluster"]["worker"][0]
    proc = _start([*TRAIN, colours], tf_config, tmp_path)
    try:
        seen = _await_line(proc, "waiting for the cluster")
        assert f"worker 0 at {chief} (nothing listens there yet)" in seen and "of --cluster-timeout 300s" in seen
        assert "Using CPU" not in seen  # the wait comes before TensorFlow's start-up and its device line
        proc.send_signal(signum)
        sent = time.monotonic()
        code, output = _finish(proc, timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - sent < 10
    assert code == status and "Traceback" not in output, output[-3000:]
    assert f"Interrupted while waiting for the cluster (worker 0 at {chief} not started); nothing was trained." \
           in output
    assert not os.path.exists(tmp_path / "models")


@pytest.mark.slow
def test_a_worker_started_late_joins_and_both_train(colours, tmp_path):
    """The chief waits (and says so) while worker 1 is not started; started later, worker 1 joins and both train."""
    configs = distribute.local_cluster(2)
    chief = _start([*TRAIN, colours, "--cluster-timeout", "2m"], configs[0], tmp_path)
    _await_line(chief, "waiting for the cluster")
    time.sleep(3)
    other = _start([*TRAIN, colours, "--cluster-timeout", "2m"], configs[1], tmp_path / "other")
    results = [_finish(chief, 300), _finish(other, 300)]
    for code, output in results:
        assert code == 0 and "Traceback" not in output, output[-3000:]
        assert "--distribute multiworker: 2 replica(s) on 2 worker(s)" in output, output[-3000:]
    assert os.path.isdir(tmp_path / "models" / "run")


def _tf_config(**change):
    base = {"cluster": {"worker": ["127.0.0.1:2001", "127.0.0.1:2002"]}, "task": {"type": "worker", "index": 0}}
    return json.dumps({**base, **change})


@pytest.mark.parametrize("tf_config, message", [
    ("{not json", "TF_CONFIG is not a JSON object"),
    ("[1, 2]", "TF_CONFIG is not a JSON object"),
    (_tf_config(task={"type": "worker", "index": 2}),
     'TF_CONFIG: the task index 2 is out of range: cluster["worker"] has 2 address(es), so the index is from 0 to 1'),
    (_tf_config(task={"type": "worker", "index": -1}), "TF_CONFIG: the task index -1 is out of range"),
    (_tf_config(task={"type": "worker", "index": "one"}), 'TF_CONFIG: the task index "one" is out of range'),
    (_tf_config(task={"type": "chief", "index": 0}), 'TF_CONFIG: the task type "chief" is not a role of the cluster'),
    (_tf_config(task=[0]), 'TF_CONFIG: "task" must be an object like {"type": "worker", "index": 0}'),
    (_tf_config(cluster=["a:1"]), 'TF_CONFIG: "cluster" must map roles to lists of "host:port" addresses'),
    (_tf_config(cluster={"worker": "127.0.0.1:2001"}), 'TF_CONFIG: cluster["worker"] must be a non-empty list'),
    (_tf_config(cluster={"worker": []}), 'TF_CONFIG: cluster["worker"] must be a non-empty list'),
    (_tf_config(cluster={"worker": ["127.0.0.1", "b:1"]}), 'TF_CONFIG: cluster["worker"][0] is "127.0.0.1", not'),
    (_tf_config(cluster={"worker": ["a:0", "b:1"]}), 'cluster["worker"][0] is "a:0", not "host:port" with a port from'),
    (_tf_config(cluster={"worker": ["a:1", "b:65536"]}), 'cluster["worker"][1] is "b:65536", not "host:port"'),
    (_tf_config(cluster={"worker": ["a:1", 7]}), 'cluster["worker"][1] is 7, not "host:port"'),
    (_tf_config(cluster={"worker": ["a b:1", "c:2"]}), 'cluster["worker"][0] is "a b:1", not "host:port"'),
    (_tf_config(cluster={"worker": ["a:1", "A:1"]}),
     'TF_CONFIG: cluster["worker"][1] A:1 is also cluster["worker"][0]: each task needs its own address'),
    (_tf_config(cluster={"chief": ["a:1"], "worker": ["a:1"]}), 'cluster["worker"][0] a:1 is also cluster["chief"][0]'),
    (_tf_config(cluster={"chief": ["a:1", "b:1"], "worker": ["c:1"]}),
     'cluster["chief"] lists 2 addresses; a cluster has one chief'),
    (_tf_config(cluster={"worker": ["a:1"], "ps": ["b:1"]}),
     "TF_CONFIG: the cluster has ps tasks, and --distribute multiworker trains on chief and worker tasks only"),
])
def test_a_bad_tf_config_is_one_error_line_before_tensorflow_starts(colours, tmp_path, tf_config, message):
    started = time.monotonic()
    status, output = _finish(_start([*TRAIN, colours], tf_config, tmp_path))
    assert status == 1 and "Traceback" not in output, output[-3000:]
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], output  # no device line
    assert "TF_CONFIG" in lines[0] and "fix or unset it" in lines[0]
    assert time.monotonic() - started < 30
    assert not os.path.exists(tmp_path / "models")


def test_auto_checks_the_cluster_it_picks():
    """``auto`` takes multiworker for a cluster of two tasks, and then needs this process's task (TensorFlow's
    traceback before), as ``multiworker`` does."""
    environ = {"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1", "b:1"]}})}
    with pytest.raises(ConfigError, match="needs TF_CONFIG naming a cluster of two or more tasks and this process's"):
        distribute.choose("auto", 0, environ)
    assert distribute.choose("none", 0, environ) == "none"


def test_a_string_index_of_digits_and_a_chief_are_read_as_tensorflow_reads_them():
    environ = {"TF_CONFIG": json.dumps({"cluster": {"chief": ["[::1]:2000"], "worker": ["h:2001"]},
                                        "task": {"type": "worker", "index": "0"}})}
    assert distribute.cluster(environ)[1] == {"type": "worker", "index": 0}
    assert distribute.rank(environ) == (1, 2) and not distribute.is_chief(environ)


@pytest.mark.slow
def test_a_port_this_machine_cannot_listen_on_is_a_clear_error(colours, tmp_path):
    import socket

    with socket.create_server(("", 0)) as busy:
        port = busy.getsockname()[1]
        tf_config = {"cluster": {"worker": [f"127.0.0.1:{port}", "127.0.0.1:1"]},
                     "task": {"type": "worker", "index": 0}}
        status, output = _finish(_start([*TRAIN, colours], tf_config, tmp_path))
    assert status == 1 and "Traceback" not in output, output[-3000:]
    assert f"Error: TF_CONFIG: this task's address 127.0.0.1:{port} names port {port}, which this machine cannot " \
           "listen on" in output
    assert "give this task a free port in every worker's TF_CONFIG" in output
    assert len(output.strip().splitlines()) == 1, output  # before TensorFlow starts: no device line


def test_cluster_timeout_must_be_a_duration(colours, tmp_path):
    status, output = _finish(_start([*TRAIN, colours, "--cluster-timeout", "soon"], distribute.local_cluster(2)[0],
                                    tmp_path))
    assert status == 1 and output.strip() == ("Error: --cluster-timeout must be a duration such as 90s, 15m or 1.5h "
                                              "(or none); got 'soon'.")


@pytest.mark.slow
def test_a_port_held_by_another_program_is_not_taken_for_a_worker(colours, tmp_path):
    """Worker 1's address answers, but as an HTTP/1 server, not as TensorFlow's gRPC: the wait goes on and names it
    (rather than leaving TensorFlow to wait for it, silently, for an hour)."""
    import socket
    import threading

    tf_config = distribute.local_cluster(2)[0]
    other = tf_config["cluster"]["worker"][1]
    server = socket.create_server(("127.0.0.1", int(other.rsplit(":", 1)[1])))

    def answer():
        with contextlib.suppress(OSError):
            while True:
                connection = server.accept()[0]
                connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                connection.close()

    threading.Thread(target=answer, daemon=True).start()
    try:
        status, output = _finish(_start([*TRAIN, colours, "--cluster-timeout", "3s"], tf_config, tmp_path))
    finally:
        server.close()
    assert status == 1 and "Traceback" not in output, output[-3000:]
    assert f"Error: the cluster did not start within --cluster-timeout 3s: no answer from worker 1 at {other} " \
           "(something listens there, but not a worker)" in output, output
