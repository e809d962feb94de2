"""Shared fixtures: small generated image folders, a CLI runner, and one trained run reused by many tests."""

from __future__ import annotations

import os
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
def runner():
    return CliRunner()


@pytest.fixture
def colours_dir(tmp_path):
    return make_dataset(tmp_path / "colours")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A scratch net trained (both phases) on colours through the CLI; shared by predict/export tests."""
    from cli import main

    root = tmp_path_factory.mktemp("trained")
    data = make_dataset(root / "colours", per_class=16)
    result = CliRunner().invoke(main, [
        "train", data, "--backbone", "smallcnn", "--image-size", "32", "--epochs", "8", "--fine-tune-epochs", "1",
        "--augment", "none", "--batch-size", "8", "--lr", "0.003", "-o", str(root / "models"), "--name", "colours",
        "--quiet"])
    assert result.exit_code == 0, result.output
    return {"run": str(root / "models" / "colours"), "data": data, "root": root}


#: Fixtures that train a model (or start a process that does) before their tests run: every test that uses one,
#: directly or through another fixture, is slow, so ``make test-fast`` leaves it out. Tests that train in their own
#: body carry ``@pytest.mark.slow`` instead.
TRAINING_FIXTURES = {"trained_run", "from_toml", "trained", "planted", "located", "run", "partial", "evil_run",
                     "interrupted", "runs", "quiet_run"}


def pytest_collection_modifyitems(items):
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
