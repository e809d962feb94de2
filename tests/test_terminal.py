"""The terminal as a new user sees it (issue 15): no TensorFlow start-up noise, the device said once, one line
per epoch in logs, a summary table; ``-v`` gives TensorFlow its voice back. environment.json (issue 16)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from importlib import metadata

import pytest
from click.testing import CliRunner

from cli import main
from conftest import make_dataset
from transfer import console, runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--backbone", "smallcnn", "--image-size", "32", "--augment", "none", "--batch-size", "8"]
NOISE = re.compile(r"I0000|E0000|W0000|absl|cuInit|cuda|oneDNN|cpu_feature_guard", re.IGNORECASE)
DEVICE = re.compile(r"^Using (CPU \(\d+ cores?\)|\d+ GPUs?: .+)$")


def _train(*args):
    """``transfer ARGS`` as a user runs it: a fresh process, no TTY (stderr is a pipe), and none of the
    TensorFlow logging variables that the test session sets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CPP", "GRPC"))}
    return subprocess.run([sys.executable, "-m", "cli", *map(str, args)], cwd=ROOT, env={**env, "PYTHONPATH": ROOT},
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def quiet_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("terminal")
    data = make_dataset(tmp / "colours", per_class=6)
    proc = _train("train", data, *TINY, "--epochs", "2", "--fine-tune-epochs", "1", "-o", tmp / "models",
                  "--name", "quiet", "--cache-dir", tmp / "cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"proc": proc, "data": data, "tmp": tmp, "run": str(tmp / "models" / "quiet")}


def test_no_tensorflow_start_up_noise(quiet_run):
    stderr = quiet_run["proc"].stderr
    assert not [line for line in stderr.splitlines() if NOISE.search(line)], stderr
    assert "\r" not in stderr and "Traceback" not in stderr  # no progress bar redrawn into a log


def test_the_device_is_said_once(quiet_run):
    lines = [line for line in quiet_run["proc"].stderr.splitlines() if DEVICE.match(line)]
    assert len(lines) == 1, quiet_run["proc"].stderr
    assert lines[0] == console.device_line()


def test_one_line_per_epoch_per_phase(quiet_run):
    stderr = quiet_run["proc"].stderr
    epochs = re.findall(r"^epoch (\d+)/(\d+) \((\w+)\)  loss [\d.]+  acc [\d.]+  val_loss [\d.]+  val_acc [\d.]+  "
                        r"[\d.]+ s$", stderr, re.MULTILINE)
    assert epochs == [("1", "2", "head"), ("2", "2", "head"), ("1", "1", "fine_tune")], stderr
    assert not re.search(r"^Epoch \d|/step", stderr, re.MULTILINE)  # Keras' own progress is replaced
    history = open(os.path.join(quiet_run["run"], runs.HISTORY_FILE)).read().splitlines()
    assert len(history) == 1 + len(epochs)


def test_summary_table(quiet_run):
    stdout = quiet_run["proc"].stdout
    metrics = json.load(open(os.path.join(quiet_run["run"], runs.METRICS_FILE)))
    assert f"run folder    {quiet_run['run']}" in stdout
    assert f"val accuracy  {metrics['val']['accuracy']:.4f}" in stdout
    assert re.search(rf"^best epoch    \d/\d \({metrics['best_phase']}\), epoch {metrics['best_epoch']} of the run$",
                     stdout, re.MULTILINE), stdout
    for stage in ("audit", "model", "head", "fine_tune", "evaluate", "total"):
        assert re.search(rf"^{stage}\s+\d*\s+\d+\.\d$", stdout, re.MULTILINE), (stage, stdout)
    assert re.search(r"^head\s+2\s", stdout, re.MULTILINE) and re.search(r"^fine_tune\s+1\s", stdout, re.MULTILINE)


def test_environment_is_recorded(quiet_run):
    run = quiet_run["run"]
    environment = json.load(open(os.path.join(run, runs.ENVIRONMENT_FILE)))
    assert environment["tensorflow"] == metadata.version("tensorflow")
    assert environment["keras"] == metadata.version("keras") and environment["numpy"] == metadata.version("numpy")
    assert environment["python"] == ".".join(map(str, sys.version_info[:3]))
    assert environment["devices"]["cpu_cores"] >= 1 and isinstance(environment["devices"]["gpus"], list)
    assert environment["platform"] and environment["transfer"]
    assert runs.replace_problem(run) is None  # the run's own file: --overwrite may replace it


def test_verbose_is_accepted_and_json_stays_clean(quiet_run):
    tmp = quiet_run["tmp"]
    proc = _train("-v", "train", quiet_run["data"], *TINY, "--epochs", "1", "--fine-tune-epochs", "0", "-o",
                  tmp / "models", "--name", "loud", "--cache-dir", tmp / "cache", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["run_dir"] == str(tmp / "models" / "loud") and "val" in result["metrics"]
    assert len(re.findall(r"^epoch \d+/1 \(head\)", proc.stderr, re.MULTILINE)) == 1


@pytest.fixture
def restored_console(monkeypatch):
    """The environment and import hooks as they were, whatever the CLI changes in this process."""
    for name in console.QUIET_ENV:
        monkeypatch.delenv(name, raising=False)
    yield
    console.loud()


@pytest.mark.parametrize("args", [["-v", "train", "--help"], ["train", "-v", "--help"], ["predict", "--verbose", "-h"]])
def test_verbose_leaves_tensorflow_logging_alone(restored_console, args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ and "GRPC_VERBOSITY" not in os.environ
    assert not [f for f in sys.meta_path if isinstance(f, console._QuietTensorFlow)]


def test_quiet_by_default_but_the_user_setting_wins(restored_console, monkeypatch):
    assert CliRunner().invoke(main, ["train", "--help"]).exit_code == 0
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    assert CliRunner().invoke(main, ["train", "--help"]).exit_code == 0
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


def test_silenced_replays_what_it_kept_when_the_block_fails(capfd):
    with console.silenced():
        os.write(2, b"start-up chatter\n")
    with pytest.raises(RuntimeError), console.silenced():
        os.write(2, b"the reason it failed\n")
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError), console.silenced(replay=False):  # where the caller handles the failure
        os.write(2, b"a diagnostic of a handled failure\n")
        raise RuntimeError("boom")
    err = capfd.readouterr().err
    assert "start-up chatter" not in err and "handled failure" not in err and "the reason it failed" in err


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_on_a_terminal_each_epoch_has_a_bar_with_rate_and_eta(monkeypatch, caplog):
    import keras
    import numpy as np

    from transfer.progress import EpochProgress

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    with caplog.at_level(logging.INFO, logger="transfer"):
        model.fit(np.zeros((8, 3)), np.zeros(8), batch_size=2, epochs=3, initial_epoch=1, verbose=0,
                  callbacks=[EpochProgress("fine_tune", first=1, epochs=2, verbose=1)])
    drawn = terminal.getvalue()
    assert "epoch 1/2 (fine_tune)" in drawn and "epoch 2/2 (fine_tune)" in drawn
    assert re.search(r"[1-4]/4 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+(batch/s|s/batch)", drawn), drawn  # elapsed<ETA, rate
    ours = [r.getMessage().split("  ")[0] for r in caplog.records if r.name == "transfer"]  # not TF's retrace notes
    assert ours == ["epoch 1/2 (fine_tune)", "epoch 2/2 (fine_tune)"]
