"""--resume after kill -9 or Ctrl-C, in either phase: every epoch once, a complete run folder, a model that works.

Each scenario runs the real CLI in subprocesses on generated colour images.
Epochs are made of many small batches, and a process is stopped once the
backup of a given epoch appears, so the signal lands inside a later epoch.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import invoke, make_dataset
from transfer import runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
SCRATCH = ["--backbone", "smallcnn", "--image-size", "32", "--augment", "none", "--batch-size", "2", "--epochs", "3",
           "--fine-tune-epochs", "4"]
FINISHED = {runs.MODEL_FILE, runs.CONFIG_FILE, runs.LABELS_FILE, runs.HISTORY_FILE, runs.METRICS_FILE, runs.SPLIT_FILE,
            runs.SKIPPED_FILE, runs.PLOT_FILE, runs.MARKER_FILE, runs.ENVIRONMENT_FILE,
            runs.REPORT_FILE, runs.CONFUSION_FILE}


def cli(*args):
    """``transfer ARGS`` run to its end in this process (the kills are in processes of their own: :func:`start`)."""
    return invoke(*args)


def start(*args):
    return subprocess.Popen([sys.executable, "-m", "cli", *map(str, args)], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_after_backup(proc, staging, epochs, signum, timeout=240):
    """Send ``signum`` once the backup after ``epochs`` epochs is complete (the process is then in a later epoch)."""
    state = os.path.join(staging, runs.BACKUP_FOLDER, f"epoch-{epochs:06d}", runs.STATE_FILE)
    deadline = time.monotonic() + timeout
    while not os.path.exists(state):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no backup appeared"
        time.sleep(0.02)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, err


def history(run_dir, column=None):
    with open(os.path.join(run_dir, runs.HISTORY_FILE), newline="") as f:
        rows = list(csv.DictReader(f))
    if column:
        return [float(row[column]) for row in rows]
    return [int(row["epoch"]) for row in rows], [row["phase"] for row in rows]


def assert_finished(run_dir, phases):
    """Every epoch exactly once, in its phase; only a finished run's files; a model that predicts the colours."""
    epochs, seen = history(run_dir)
    assert epochs == list(range(len(phases))) and seen == phases
    elapsed = history(run_dir, "elapsed_seconds")
    assert elapsed == sorted(elapsed)  # the time spent before a stop counts on (--time-limit too)
    assert set(os.listdir(run_dir)) == FINISHED
    assert not os.path.exists(run_dir + runs.STAGING_SUFFIX)
    metrics = json.load(open(os.path.join(run_dir, runs.METRICS_FILE)))
    assert metrics["val"]["accuracy"] >= 0.9  # an uninterrupted run of these colours reaches 1.0
    from transfer import predict

    images = sorted(glob.glob(os.path.join(os.path.dirname(run_dir), os.pardir, "colours", "*", "000.png")))
    result = predict(run_dir, images)
    assert [p.label for p in result.predictions] == [os.path.basename(os.path.dirname(i)) for i in images]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    make_dataset(root / "colours", per_class=40)
    return root


@pytest.fixture(scope="module")
def interrupted(root):
    """A run stopped with Ctrl-C in phase 1: its exit status, stderr, and its partial folder."""
    proc = start("train", root / "colours", *SCRATCH, "-o", root / "models", "--name", "scratch",
                 "--cache-dir", root / "cache", "-q")
    status, err = stop_after_backup(proc, root / "models" / "scratch.partial", 1, signal.SIGINT)
    return status, err, str(root / "models" / "scratch.partial")


def test_ctrl_c_stops_with_130_and_prints_the_resume_command(interrupted):
    status, err, staging = interrupted
    assert status == 130 and "Traceback" not in err, err[-3000:]
    (line,) = [line for line in err.splitlines() if line.startswith("Interrupted")]
    assert staging in line and line.endswith("--name scratch --resume")
    assert runs.latest_backup(staging)


def test_a_resumable_run_is_kept_and_a_resume_must_not_change_its_settings(root, interrupted):
    data, out, before = root / "colours", root / "models", sorted(os.listdir(interrupted[2]))
    plain = cli("train", data, *SCRATCH, "-o", out, "--name", "scratch")
    assert plain.returncode == 1 and "add --resume to continue it, or --overwrite" in plain.stderr, plain.stderr
    changed = cli("train", data, "-o", out, "--name", "scratch", "--resume", "--fine-tune-lr", "0.01")
    assert changed.returncode == 1 and "--fine-tune-lr was 0.0001, not 0.01" in changed.stderr, changed.stderr
    missing = cli("train", data, "-o", out, "--name", "other", "--resume")
    assert missing.returncode == 1 and "no unfinished run" in missing.stderr, missing.stderr
    assert sorted(os.listdir(interrupted[2])) == before


@pytest.fixture(scope="module")
def resumed_twice(root, interrupted):
    """The interrupted run, continued with the printed command, killed in phase 2, and resumed again."""
    command = interrupted[1].split("Continue with: ")[1].split()
    assert command[:2] == ["transfer", "train"]
    proc = start(*command[1:], "-q")  # the command as printed, through this checkout's CLI
    status, _ = stop_after_backup(proc, interrupted[2], 4, signal.SIGKILL)  # phase 2's first epoch is backed up
    killed = history(interrupted[2])
    return status, killed, cli(*command[1:]), str(root / "models" / "scratch")


def test_the_printed_command_resumes_and_a_kill_in_phase_2_resumes_too(resumed_twice):
    status, (epochs, phases), resumed, run_dir = resumed_twice
    assert status == -signal.SIGKILL and phases[:4] == ["head"] * 3 + ["fine_tune"] and epochs[:4] == [0, 1, 2, 3]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed at epoch" in resumed.stderr
    assert_finished(run_dir, ["head"] * 3 + ["fine_tune"] * 4)


def test_a_kill_in_phase_1_on_cached_features_resumes_without_computing_them_again(root, resumed_twice):
    """Transfer from the run above: phase 1 on cached features (with Keras' fit, which backs up every epoch; the
    compiled epochs back up at the phase's end: test_fast_head.py), phase 2 on cached activations."""
    args = ["train", root / "colours", "--backbone", resumed_twice[3], "--augment", "none", "--batch-size", "2",
            "--head-fit", "keras", "--epochs", "12", "--fine-tune-epochs", "1", "--unfreeze", "after:block2_pool", "--patience", "20",
            "-o", root / "models", "--name", "cached", "--cache-dir", root / "cache"]
    status, _ = stop_after_backup(start(*args), root / "models" / "cached.partial", 2, signal.SIGKILL)
    assert status == -signal.SIGKILL
    resumed = cli(*args[:2], "-o", root / "models", "--name", "cached", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    caches = [line for line in resumed.stderr.splitlines() if line.startswith("feature cache ")]
    assert caches and caches[0].endswith("120 image(s) from the cache, 0 computed")
    assert_finished(str(root / "models" / "cached"), ["head"] * 12 + ["fine_tune"])


def test_sigterm_waits_for_the_end_of_the_batch_and_exits_143():
    """A preempted machine's SIGTERM, in this process: during a batch it only asks; the batch's end stops."""
    from transfer.training import callbacks, interrupts

    with interrupts.handled() as stop:
        stop.fitting = True
        os.kill(os.getpid(), signal.SIGTERM)  # Python runs the handler before the next line
        callback = callbacks.StopAfterBatch(stop)
        with pytest.raises(KeyboardInterrupt):
            callback.on_train_batch_end(0)
        assert stop.status == 143
        with pytest.raises(KeyboardInterrupt):  # a second signal stops at once
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are given back


def test_a_backup_or_a_history_row_that_a_kill_cut_short_is_not_used(tmp_path):
    """A kill while a backup or a row of history.csv is being written: the last complete one counts."""
    from transfer.errors import RunError
    from transfer.training import resume

    run = runs.RunFolder(str(tmp_path), "r")
    run.start()
    complete = run.new_backup(2)
    runs.write_text(os.path.join(complete, runs.STATE_FILE), json.dumps({"epoch": 2, "phase_start": 0}))
    run.keep_backup(complete)
    os.makedirs(os.path.join(run.new_backup(3), "half-written"))  # no state file yet
    assert run.latest_backup() == complete and resume.load(run).epoch == 2
    with open(run.path(runs.HISTORY_FILE), "w") as f:
        f.write("epoch,loss,phase\n0,0.9,head\n1,0.5,head\n2,0.4,head\n3,0.")
    resume._truncate_history(run.path(runs.HISTORY_FILE), 2)
    assert open(run.path(runs.HISTORY_FILE)).read() == "epoch,loss,phase\n0,0.9,head\n1,0.5,head\n"
    with pytest.raises(RunError, match="add --resume to continue it, or --overwrite"):
        runs.RunFolder(str(tmp_path), "r")
    runs.RunFolder(str(tmp_path), "r", overwrite=True).start()  # --overwrite starts again
    assert run.latest_backup() is None


@pytest.mark.slow
def test_a_kill_inside_the_fine_tuning_probe_of_a_run_that_chose_its_backbone_resumes_both(root):
    """--backbone auto chooses once, when the run starts: a resume (even one that repeats --backbone auto) keeps the
    backbone config.json names and does not measure again. --fine-tune auto, killed after the probe's first epoch:
    the resumed run finds the head's measurement and weights in its partial folder, decides after the probe's last
    epoch, and leaves no probe files behind. (Two classes no model can tell apart: the head leaves errors, so the
    probe runs. No deeper phase: whether this probe pays is chance; a resume inside the deeper one is
    test_finetune_depth.py's.)"""
    data = make_dataset(root / "greys", per_class=40, colours={"a": (128, 128, 128), "b": (128, 128, 128),
                                                               "c": (220, 30, 30)})
    args = ["train", data, "--backbone", "auto", "--candidates", "efficientnet_lite0", "--image-size", "32",
            "--feature-engine", "keras", "--batch-size", "8", "--head-fit", "keras", "--epochs", "3", "--fine-tune",
            "auto", "--fine-tune-epochs", "5", "--deeper-unfreeze", "none", "-o", root / "models", "--name", "probe",
            "--cache-dir", root / "cache"]
    status, _ = stop_after_backup(start(*args), root / "models" / "probe.partial", 4, signal.SIGKILL)
    assert status == -signal.SIGKILL
    resumed = cli("train", "-o", root / "models", "--name", "probe", "--backbone", "auto", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed at epoch 5" in resumed.stderr and "--backbone auto chose" not in resumed.stderr, resumed.stderr
    run_dir = str(root / "models" / "probe")
    record = json.load(open(os.path.join(run_dir, runs.CONFIG_FILE)))
    assert record["config"]["backbone"] == record["backbone_choice"]["chosen"] == "efficientnet_lite0"
    assert os.path.isfile(os.path.join(run_dir, runs.BACKBONE_CHOICE_FILE))
    probed = record["fine_tune_probe"]
    assert probed["decision"] in ("fine-tune", "head only") and probed["probe_epochs"] == 3
    tuned = 5 if probed["decision"] == "fine-tune" else 3
    assert history(run_dir) == (list(range(3 + tuned)), ["head"] * 3 + ["fine_tune"] * tuned)
    assert not os.path.exists(os.path.join(run_dir, runs.HEAD_WEIGHTS_FILE))
