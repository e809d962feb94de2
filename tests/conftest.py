"""Shared fixtures: small generated image folders, a CLI runner, and one trained run reused by many tests."""

from __future__ import annotations

import fcntl
import os
import shutil
import traceback
from dataclasses import dataclass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

COLOURS = {"blue": (20, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}


def write_image(path, colour, size=32, seed=0, fmt=None):
    """A solid colour with noise: easy to learn, different per file."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour, np.float64) + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def make_dataset(root, per_class=12, size=32, colours=COLOURS, splits=None, seed=0):
    """``root/<class>/i.png`` or, with ``splits={"train": n, "val": m}``, ``root/<split>/<class>/i.png``."""
    layout = splits or {"": per_class}
    for s, (split, n) in enumerate(layout.items()):
        for c, (name, colour) in enumerate(colours.items()):
            for i in range(n):
                write_image(os.path.join(root, split, name, f"{i:03d}.png"), colour, size, seed + 1000 * s + 100 * c + i)
    return str(root)


@dataclass
class Invocation:
    """What a finished ``transfer`` command left: the fields of ``subprocess.CompletedProcess`` that tests read."""

    returncode: int
    stdout: str
    stderr: str


def invoke(*args, cwd=None) -> Invocation:
    """``transfer ARGS`` inside this test process, with ``cwd`` as the working folder.

    A fresh process costs about 5 s of TensorFlow import before the command starts; tests that do not check
    what only a process shows (signals, exit on kill, the umask, start-up noise, a clean interpreter) call this.
    An exception that escapes the CLI is written into stderr as the traceback a process would print, so that a
    test's "no Traceback" check still fails on it.
    """
    from cli import main

    before = os.getcwd()
    os.chdir(cwd or before)
    try:
        result = CliRunner().invoke(main, [str(a) for a in args], prog_name="transfer")
    finally:
        os.chdir(before)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "Traceback (most recent call last):\n" + "".join(traceback.format_exception(result.exception))
    return Invocation(result.exit_code, result.stdout, stderr)


@pytest.fixture(autouse=True)
def _isolated_keras_home(tmp_path_factory, monkeypatch):
    """Never read or write the user's ~/.keras from tests."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path_factory.mktemp("keras_home")))


@pytest.fixture
def never_serves(monkeypatch):
    """In-process serve commands must fail before serving: a server that started would fail the test, not hang it."""
    from transfer.serve import Server

    def run(self):
        raise AssertionError(f"the server started on {self.url}")

    monkeypatch.setattr(Server, "run", run)


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def colours_dir(tmp_path):
    return make_dataset(tmp_path / "colours")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A scratch net trained (both phases) on colours through the CLI; shared by predict/export tests.

    Trained once for the whole suite: under pytest-xdist the first worker to need it trains it in the folder that
    all workers share, under a lock, and the others wait for it. Tests only read it (each process checks at its
    end that the run and its data are as they were): a test that wrote there could break another's."""
    from cli import main

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # pytest-of-USER/pytest-N: every worker's basetemp is one folder below it
    root = shared / "trained_run"
    found = {"run": str(root / "models" / "colours"), "data": str(root / "colours"), "root": root}
    with open(shared / "trained_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes: after the run is complete
        if not os.path.isdir(found["run"]):
            shutil.rmtree(root, ignore_errors=True)  # a worker that failed here left a half-trained run
            data = make_dataset(root / "colours", per_class=16)
            result = CliRunner().invoke(main, [
                "train", data, "--backbone", "smallcnn", "--image-size", "32", "--epochs", "8",
                "--fine-tune-epochs", "1", "--augment", "none", "--batch-size", "8", "--lr", "0.003",
                "-o", str(root / "models"), "--name", "colours", "--quiet"])
            assert result.exit_code == 0, result.output
    before = _tree(root)
    yield found
    assert _tree(root) == before, "a test wrote into the shared trained_run (its run folder or its data)"


def _tree(root) -> dict[str, tuple[int, int]]:
    """{path: (size, mtime)} of everything under ``root``, folders too (an added or removed file changes theirs)."""
    found = {}
    for folder, _, files in os.walk(root):
        for path in [folder, *(os.path.join(folder, f) for f in files)]:
            info = os.stat(path)
            found[path] = (info.st_size, info.st_mtime_ns)
    return found


#: Fixtures that train a model (or start a process that does) before their tests run: every test that uses one,
#: directly or through another fixture, is slow, so ``make test-fast`` leaves it out. Tests that train in their own
#: body carry ``@pytest.mark.slow`` instead.
TRAINING_FIXTURES = {"trained_run", "from_toml", "trained", "planted", "located", "run", "partial", "evil_run",
                     "interrupted", "runs", "quiet_run"}


#: The test files that take longest, slowest first (their tests' seconds summed, on one of three pytest-xdist processes,
#: 2026-12-06). ``make test`` hands files to its processes in this order, the rest after them in their usual order, so
#: that no long file starts last and keeps one process busy while the others idle; re-measure with ``--durations=0``.
SLOWEST_FILES = ("test_distribute", "test_auto", "test_resume", "test_features", "test_tflite_export",
                 "test_hardening_cluster", "test_fast_head", "test_saved_model", "test_hardening", "test_finetune_probe",
                 "test_efficientnet_lite", "test_backbones", "test_explain", "test_serve_hardening",
                 "test_seed_backbones", "test_finetune_depth", "test_tensorboard", "test_training",
                 "test_hardening_data", "test_end_to_end", "test_terminal", "test_determinism", "test_speed_options",
                 "test_onnx_export", "test_doctor", "test_evaluate", "test_report", "test_validation_freq")


def pytest_collection_modifyitems(items):
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: the rest keep their order
