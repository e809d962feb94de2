"""train --tensorboard DIR: per-epoch scalars of both phases (the compiled head too), the learning rate and the
final confusion matrix, read back from the event files; nothing without it; a DIR inside the dataset is refused."""

from __future__ import annotations

import collections
import glob
import io
import os
import signal
import time

import pytest
from PIL import Image

from conftest import make_dataset
from test_resume import SCRATCH, cli, start
from transfer import runs

pytestmark = pytest.mark.slow  # trains through the CLI, killed and resumed once

LITE = ["--backbone", "efficientnet_lite0", "--image-size", "32", "--batch-size", "4"]
SCALARS = {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"}


def events(folder):
    """{(tag, plugin): [step, ...]} of every event file under ``folder``, in file order. The plugin (scalars,
    images) is what TensorBoard draws it with: its metadata comes with a tag's first value in each file."""
    import tensorflow as tf

    found = collections.defaultdict(list)
    for path in sorted(glob.glob(os.path.join(folder, "*.tfevents.*"))):
        plugins = {}
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                plugin = plugins.setdefault(value.tag, value.metadata.plugin_data.plugin_name)
                found[value.tag, plugin].append(event.step)
    return found


def steps(folder, tag):
    return events(folder)[tag, "scalars"]


def kill_between_epochs(proc, staging, board, first, last, timeout=240):
    """SIGKILL once from ``first`` to ``last - 1`` epochs are backed up and written for TensorBoard, the run not
    finished. The process is paused (SIGSTOP) while both are read, so that no epoch ends between check and kill."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no backed-up epoch was written for TensorBoard in time"
        proc.send_signal(signal.SIGSTOP)
        backed_up = max([int(path.split("epoch-")[1][:6]) for path in
                         glob.glob(os.path.join(staging, runs.BACKUP_FOLDER, "epoch-*", runs.STATE_FILE))], default=0)
        assert backed_up < last, "the run ended before an epoch was both backed up and written for TensorBoard"
        if backed_up >= first and _written(board) == backed_up:
            proc.kill()
            proc.communicate(timeout=120)
            return proc.returncode
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.05)


def _written(board) -> int:
    """How many epochs TensorBoard's files under ``board`` hold (-1 while a record is half-written)."""
    import tensorflow as tf

    try:
        found = [step for phase in ("head", "fine_tune") for step in steps(board / phase, "loss")]
    except tf.errors.DataLossError:
        return -1
    return max(found, default=-1) + 1


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("board")
    make_dataset(root / "colours", per_class=10)
    return root


@pytest.fixture(scope="module")
def board(root):
    """A pretrained backbone: phase 1 in compiled epochs on cached features (no Keras fit), phase 2 in fit."""
    result = cli("train", root / "colours", *LITE, "--epochs", "3", "--patience", "100", "--fine-tune-epochs", "2",
                 "--head-fit", "fast", "-o", root / "models", "--name", "board", "--tensorboard", root / "tb")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "phase head: 3 epoch(s)" in result.stderr  # the compiled head ran
    return root / "tb"


def test_both_phases_write_every_scalar_once_per_epoch_and_the_learning_rate(board):
    assert sorted(os.listdir(board)) == ["evaluation", "fine_tune", "head"]
    head, fine_tune = events(board / "head"), events(board / "fine_tune")
    assert set(head) == set(fine_tune) == {(tag, "scalars") for tag in SCALARS}  # drawn by TensorBoard's scalars
    for tag in SCALARS:  # one step per epoch, counted over the whole run as history.csv counts it
        assert head[tag, "scalars"] == [0, 1, 2] and fine_tune[tag, "scalars"] == [3, 4]


def test_the_learning_rate_is_each_phases_own(board):
    import tensorflow as tf

    for phase, rate in (("head", 1e-3), ("fine_tune", 1e-4)):  # the defaults of --lr and --fine-tune-lr
        (path,) = glob.glob(str(board / phase / "*.tfevents.*"))
        rates = [float(tf.make_ndarray(v.tensor)) for e in tf.compat.v1.train.summary_iterator(path)
                 for v in e.summary.value if v.tag == "learning_rate"]
        assert rates == pytest.approx([rate] * len(rates)) and rates


def test_the_confusion_matrix_is_one_image_at_the_last_epoch(board):
    import tensorflow as tf

    found = events(board / "evaluation")
    assert dict(found) == {("confusion_matrix", "images"): [4]}
    (path,) = glob.glob(str(board / "evaluation" / "*.tfevents.*"))
    (value,) = [v for e in tf.compat.v1.train.summary_iterator(path) for v in e.summary.value]
    width, height, png = tf.make_ndarray(value.tensor)  # as tf.summary.image writes it: width, height, the PNG
    assert Image.open(io.BytesIO(png)).size == (int(width), int(height)) and int(width) > 100


def test_a_run_without_it_writes_no_event_file(trained_run):
    """The shared run trained without --tensorboard: no event file anywhere under its folder."""
    assert not glob.glob(os.path.join(trained_run["root"], "**", "*tfevents*"), recursive=True)


def test_a_folder_inside_the_dataset_is_refused_before_any_work(root):
    inside = root / "colours" / "red" / "tb"
    result = cli("train", root / "colours", *LITE, "-o", root / "models", "--name", "refused", "--tensorboard", inside)
    assert result.returncode != 0 and not os.path.exists(inside)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "--tensorboard" in errors[0] and "dataset" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_a_resumed_run_continues_each_curve_without_repeating_a_step(root):
    """Killed in phase 2 (after its first epoch's backup), resumed: every epoch of the run once, in its phase.

    An epoch is written for TensorBoard just after its backup (a kill in between would lose that one step, never
    repeat it), so the kill comes once both are done: see :func:`kill_between_epochs`."""
    args = ["train", root / "colours", *SCRATCH, "-o", root / "models", "--name", "killed", "--tensorboard",
            root / "tb-resumed", "-q"]
    status = kill_between_epochs(start(*args), root / "models" / "killed.partial", root / "tb-resumed", 4, 7)
    assert status == -signal.SIGKILL
    resumed = cli(*args[:2], "-o", root / "models", "--name", "killed", "--resume")  # the run knows its DIR
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(glob.glob(str(root / "tb-resumed" / "fine_tune" / "*.tfevents.*"))) == 2  # the killed run's, the new
    for tag in SCALARS:
        assert steps(root / "tb-resumed" / "head", tag) == [0, 1, 2]
        assert steps(root / "tb-resumed" / "fine_tune", tag) == [3, 4, 5, 6]
