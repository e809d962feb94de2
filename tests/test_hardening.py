"""Careless and hostile input, through the CLI as a user types it (issue 12).

Every case must end in one ``Error: ...`` line (or a warning) with the right
exit status, never a traceback or a hang, and must leave the dataset folder
exactly as it was: every file's bytes and mode, every path. The cases are
grouped by kind: data loss, labels, the scan, numbers, resources, library
types, file errors and messages.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import zipfile

import pytest

from conftest import COLOURS, invoke, make_dataset, write_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--backbone", "smallcnn", "--image-size", "32", "--epochs", "1", "--fine-tune-epochs", "0", "--augment", "none",
        "--batch-size", "8"]


def cli(*args, cwd=ROOT, timeout=None, umask=None):
    """``transfer ARGS``, offline, from this checkout: in this process, or in a fresh one where the test needs what
    only a process gives: a umask, or a deadline (a FIFO or a file that never answers must not hang the suite)."""
    if umask is None and timeout is None:
        return invoke(*args, cwd=cwd)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "cli", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout or 180,
                          preexec_fn=None if umask is None else lambda: os.umask(umask))


def train(data, out, *args, **kwargs):
    return cli("train", data, *TINY, "-o", out, "--cache-dir", os.path.join(out, os.pardir, "cache"), *args, **kwargs)


def failed(proc, *fragments, code=1):
    """Exit status ``code`` with exactly one ``Error:`` line that holds every fragment, and no traceback."""
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    assert proc.returncode == code, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def succeeded(proc):
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def tree(folder) -> dict[str, str]:
    """Every path under ``folder`` -> its kind, mode and (for files) sha256 of its bytes: what "unchanged" means."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode):
                with open(path, "rb") as f:
                    kind = "file " + hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(info.st_mode):
                kind = "link " + os.readlink(path)
            else:
                kind = "dir" if stat.S_ISDIR(info.st_mode) else "special"
            found[os.path.relpath(path, folder)] = f"{kind} {stat.S_IMODE(info.st_mode):o}"
    return found


@contextlib.contextmanager
def untouched(*folders):
    """Assert that nothing under ``folders`` changed while the block ran."""
    before = [tree(folder) for folder in folders]
    yield
    assert [tree(folder) for folder in folders] == before


@pytest.fixture
def data(tmp_path):
    return make_dataset(tmp_path / "photos", per_class=8)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny finished run, trained with umask 027 (shared; tests copy it before changing anything)."""
    root = tmp_path_factory.mktemp("hardening")
    data = make_dataset(root / "photos", per_class=8)
    succeeded(train(data, root / "models", "--name", "tiny", "-q", umask=0o027))
    return {"run": str(root / "models" / "tiny"), "data": data, "root": root}


@pytest.fixture
def run_copy(run, tmp_path):
    copy = tmp_path / "models" / "tiny"
    shutil.copytree(run["run"], copy)
    return str(copy)


# ---- data loss: nothing is deleted or replaced that transfer did not make -------------------------------------------

def test_overwrite_never_replaces_the_dataset(tmp_path, data):
    (tmp_path / "photos" / "notes.txt").write_text("the user's own file")
    with untouched(tmp_path):
        failed(train(data, tmp_path, "--name", "photos", "--overwrite"), "would be the dataset folder")
        failed(train(os.path.join(data, "red"), tmp_path / "photos", "--name", "red", "--overwrite"),
               "would be the dataset folder")
        failed(train(data, os.path.join(data, "red"), "--name", "red", "--overwrite"), "inside the dataset folder")
        failed(train(data, tmp_path.parent, "--name", tmp_path.name, "--overwrite"), "would contain the dataset")


@pytest.mark.parametrize("make, fragment", [
    (lambda p: p.write_text("a file"), "it is a file, not a run folder"),
    (lambda p: (p.mkdir(), (p / "thesis.tex").write_text("years of work")), "not a run folder of transfer"),
    (lambda p: p.symlink_to(p.parent), "symbolic link"),
])
def test_overwrite_replaces_only_a_finished_run(tmp_path, data, make, fragment):
    (tmp_path / "models").mkdir()
    make(tmp_path / "models" / "keep")
    with untouched(tmp_path):
        failed(train(data, tmp_path / "models", "--name", "keep", "--overwrite"), fragment, "Choose another --name")


def test_overwrite_keeps_a_run_that_holds_the_users_files(tmp_path, data, run_copy):
    os.makedirs(os.path.join(run_copy, "export", "tiny", "1"))
    with untouched(tmp_path):
        failed(train(data, tmp_path / "models", "--name", "tiny", "--overwrite"), "holds files that the run did not",
               "export")


def test_overwrite_replaces_a_run_with_the_exports_that_transfer_made_of_it(tmp_path, data, run_copy):
    """`transfer export RUN` writes RUN/export/: the run may still be replaced (make demo, twice)."""
    succeeded(cli("export", run_copy, "-q"))
    assert os.listdir(os.path.join(run_copy, "export")) == ["tiny"]
    with untouched(data):
        succeeded(train(data, tmp_path / "models", "--name", "tiny", "--overwrite"))
    assert not os.path.exists(os.path.join(run_copy, "export"))


def test_overwrite_replaces_a_finished_run_and_ctrl_c_keeps_it(tmp_path, data, run_copy):
    """Interrupted mid-training, the earlier run stays whole; finished, the new run replaces it and nothing is left."""
    before = tree(run_copy)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
    proc = subprocess.Popen([sys.executable, "-m", "cli", "train", data, *TINY, "--epochs", "500", "-o",
                             tmp_path / "models", "--name", "tiny", "--overwrite", "--cache-dir", tmp_path / "c"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if line.startswith("phase 1"):
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Interrupted" in err and "Traceback" not in err, err[-2000:]
    assert tree(run_copy) == before
    with untouched(data):
        succeeded(train(data, tmp_path / "models", "--name", "tiny", "--overwrite", "-q"))
    assert sorted(os.listdir(tmp_path / "models")) == ["tiny"]
    assert json.load(open(os.path.join(run_copy, ".transfer-run.json")))["finished"] is True


def test_a_run_from_before_the_marker_is_replaced_only_while_it_holds_only_run_files(tmp_path):
    from transfer import runs
    from transfer.errors import RunError

    old = tmp_path / "models" / "old"
    old.mkdir(parents=True)
    (old / "config.json").write_text(json.dumps({"format": 1, "model": {"labels": ["a", "b"]}}))
    (old / "model.keras").write_bytes(b"weights")
    (old / "notes.txt").write_text("the user's")
    with pytest.raises(RunError, match=r"holds files that the run did not write \(notes.txt\)"):
        runs.RunFolder(str(tmp_path / "models"), "old", overwrite=True)
    (old / "notes.txt").unlink()
    run = runs.RunFolder(str(tmp_path / "models"), "old", overwrite=True)
    run.start()
    (tmp_path / "models" / "old.partial" / "model.keras").write_bytes(b"new weights")
    assert run.commit() == str(old)
    assert sorted(os.listdir(tmp_path / "models")) == ["old"]
    assert (old / "model.keras").read_bytes() == b"new weights" and not (old / "config.json").exists()
    assert json.loads((old / ".transfer-run.json").read_text())["files"] == [".transfer-run.json", "model.keras"]


@pytest.mark.parametrize("name, fragment", [
    ("keep.partial", "'.partial' are kept for runs"), ("..", "must not start with '.'"), (".hidden", "not start"),
    ("a/b", "no slashes"), ("a\\b", "no slashes"), ("", "non-empty"), ("new\nline", "unprintable"),
    ("x" * 300, "too long"),
])
def test_run_names_are_checked(tmp_path, data, name, fragment):
    with untouched(tmp_path):
        failed(train(data, tmp_path / "models", "--name", name), "must be a plain folder name", fragment)


def test_a_leftover_partial_folder_is_removed_only_if_transfer_made_it(tmp_path, data):
    foreign = tmp_path / "models" / "keep.partial"
    foreign.mkdir(parents=True)
    (foreign / "mine.txt").write_text("not transfer's")
    with untouched(tmp_path):
        failed(train(data, tmp_path / "models", "--name", "keep"), "did not make")


def test_output_inside_the_dataset_is_refused(tmp_path, data):
    with untouched(tmp_path):
        failed(cli("train", data, *TINY, "--cache-dir", tmp_path / "c", cwd=data), "inside the dataset folder",
               "--output-dir outside")


def test_caches_inside_the_dataset_are_refused(tmp_path, data):
    with untouched(tmp_path):
        failed(cli("inspect", data, "--cache-dir", os.path.join(data, "cache")), "--cache-dir", "inside the dataset")
        failed(train(data, tmp_path / "models", "--cache-dir", os.path.join(data, "red")), "inside the dataset")


def test_runs_inside_the_dataset_are_not_taken_for_a_class(tmp_path, data, run):
    shutil.copytree(run["run"], os.path.join(data, "models", "old-run"))
    with untouched(data):
        failed(cli("inspect", data, "--cache-dir", tmp_path / "c"), "is a run folder of transfer, not images")


# ---- labels are data, not lines --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["new\nline", " ", "tab\there", " leading", "trailing ", "line\u2028sep", "bell\a"])
def test_class_names_that_cannot_be_labels_are_refused(tmp_path, data, name):
    write_image(os.path.join(data, name, "0.png"), (1, 2, 3))
    write_image(os.path.join(data, name, "1.png"), (3, 2, 1))
    with untouched(data):
        failed(cli("inspect", data, "--cache-dir", tmp_path / "c"), "cannot be a class", repr(name)[1:-1],
               "rename the folder")


def test_training_refuses_a_class_name_with_a_newline(tmp_path, data):
    write_image(os.path.join(data, "a\nb", "0.png"), (1, 2, 3))
    with untouched(tmp_path):
        failed(train(data, tmp_path / "models", "--name", "r"), "cannot be a class", "line break")


def test_a_class_name_that_is_not_utf8_is_refused(tmp_path, data):
    folder = os.path.join(os.fsencode(data), b"caf\xe9")
    os.makedirs(folder)
    write_image(os.fsdecode(os.path.join(folder, b"0.png")), (1, 2, 3))
    with untouched(data):
        failed(cli("inspect", data, "--cache-dir", tmp_path / "c"), "not valid UTF-8", "caf\\\\xe9")


def test_edited_labels_that_disagree_with_the_model_are_refused(tmp_path, run_copy):
    image = write_image(str(tmp_path / "in" / "x.png"), COLOURS["red"])
    config = os.path.join(run_copy, "config.json")
    record = json.load(open(config))
    record["model"]["labels"] = record["model"]["labels"][:2]
    with open(config, "w") as f:
        json.dump(record, f)
    with untouched(tmp_path / "in"):
        failed(cli("predict", run_copy, image), "lists 2 labels but the model", "has 3 outputs")


def test_a_lone_model_with_a_wrong_labels_file_is_refused_and_without_one_warns(tmp_path, run):
    folder = tmp_path / "lone"
    folder.mkdir()
    shutil.copy(os.path.join(run["run"], "model.keras"), folder)
    image = write_image(str(tmp_path / "in" / "x.png"), COLOURS["red"])
    bare = succeeded(cli("predict", folder / "model.keras", image))
    assert "no labels found for" in bare.stderr and "printing class indices" in bare.stderr
    assert bare.stdout.split("\t")[1] in ("0", "1", "2")
    (folder / "labels.txt").write_text("blue\ngreen\nred\nextra\n")
    failed(cli("predict", folder / "model.keras", image), "lists 4 labels", "has 3 outputs")


# ---- the scan: regular files only, symlinks and layouts said out loud -----------------------------------------------

def _fifo(path):
    os.mkfifo(path)
    return path


def _socket(path):
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()
    return path


@pytest.mark.parametrize("make, kind", [(_fifo, "a FIFO"), (_socket, "a socket")])
@pytest.mark.parametrize("name", ["pipe", "pipe.jpg"])
def test_special_files_are_skipped_not_opened(tmp_path, data, make, kind, name):
    make(os.path.join(data, "red", name))
    with untouched(data):
        proc = succeeded(cli("inspect", data, "--json", "--cache-dir", tmp_path / "c", timeout=60))
    assert {"path": os.path.join("red", name), "reason": f"not a regular file ({kind})"} in json.loads(proc.stdout)[
        "skipped"]


@pytest.mark.slow
def test_training_with_a_fifo_in_a_class_folder_finishes(tmp_path, data):
    _fifo(os.path.join(data, "red", "pipe"))
    with untouched(tmp_path / "photos"):
        proc = succeeded(train(data, tmp_path / "models", "--name", "r", timeout=120))
    assert "skipped red/pipe: not a regular file (a FIFO)" in proc.stderr


def test_a_file_that_never_answers_is_skipped_after_the_deadline(tmp_path, monkeypatch):
    """A dead network mount, stood in for by a check that blocks: the scan goes on without the file."""
    import threading

    from transfer import data as scanning
    from transfer.data import audit

    root = make_dataset(tmp_path / "d", per_class=4)
    stuck = os.path.join(root, "red", "000.png")
    release = threading.Event()
    real = audit.check_file
    monkeypatch.setattr(audit, "FILE_DEADLINE", 1.0)
    monkeypatch.setattr(audit, "check_file", lambda p, *a: release.wait() if p == stuck else real(p, *a))
    try:
        found = scanning.scan(root, cache_dir=str(tmp_path / "c"))
    finally:
        release.set()
    [skipped] = found.report.skipped
    assert skipped.path == stuck and skipped.reason.startswith("reading it took over 1 s")


def test_symlinked_class_folders_inside_are_followed_outside_refused(tmp_path, data):
    elsewhere = make_dataset(tmp_path / "elsewhere", per_class=2, colours={"cyan": (0, 200, 200)})
    os.symlink(os.path.join(data, "red"), os.path.join(data, "crimson"))
    with untouched(data):
        proc = succeeded(cli("inspect", data, "--json", "--cache-dir", tmp_path / "c"))
    assert json.loads(proc.stdout)["classes"] == ["blue", "crimson", "green", "red"]
    os.symlink(os.path.join(elsewhere, "cyan"), os.path.join(data, "cyan"))
    with untouched(data, elsewhere):
        failed(cli("inspect", data, "--cache-dir", tmp_path / "c"), "cyan' is a symlink", "outside the dataset folder")
    os.remove(os.path.join(data, "cyan"))
    os.symlink(data, os.path.join(data, "red", "loop"))
    with untouched(data):
        proc = succeeded(cli("inspect", data, "--json", "--cache-dir", tmp_path / "c"))
    assert {"path": os.path.join("red", "loop"), "reason": "not a regular file (a folder, behind a symlink)"} in \
        json.loads(proc.stdout)["skipped"]


@pytest.mark.parametrize("splits, fragments", [
    ({"val": 2, "test": 2}, ["val/", "test/", "but no train/"]),
    ({"train": 3, "val": 2, "validation": 2}, ["val/ and validation/", "two folders for the val split"]),
    ({"train": 3, "Train": 3}, ["Train/ and train/"]),
    ({"train": 3, "test": 2, "cats": 2}, ["mixes split folders", "cats/"]),
])
def test_layouts_that_read_two_ways_are_errors(tmp_path, splits, fragments):
    data = make_dataset(tmp_path / "photos", splits=splits)
    with untouched(data):
        failed(cli("inspect", data, "--cache-dir", tmp_path / "c"), *fragments)


@pytest.mark.slow
def test_a_validation_folder_without_a_class_is_a_warning(tmp_path):
    data = make_dataset(tmp_path / "photos", splits={"train": 3, "val": 2})
    shutil.rmtree(os.path.join(data, "val", "red"))
    with untouched(tmp_path / "photos"):
        proc = succeeded(train(data, tmp_path / "models", "--name", "r"))
    assert "has no images of class 'red': validation accuracy is not measured" in proc.stderr


# ---- numbers that are not numbers ------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, fragment", [
    (["--lr", "inf"], "--lr must be a finite number"), (["--lr", "nan"], "--lr must be a finite number"),
    (["--lr", "0"], "--lr must be in (0, 10]"), (["--fine-tune-lr", "-inf"], "--fine-tune-lr must be a finite"),
    (["--dropout", "nan"], "--dropout must be a finite"), (["--label-smoothing", "nan"], "--label-smoothing must be"),
    (["--max-skip-fraction", "inf"], "--max-skip-fraction must be a finite"), (["--width", "inf"], "--width must be"),
    (["--weight-decay", "nan"], "--weight-decay must be"), (["--val-split", "nan"], "--val-split must be"),
    (["--seed", "-1"], "--seed must be in [0, 4294967295]"), (["--seed", str(2**32)], "--seed must be in"),
    (["--batch-size", "0"], "--batch-size must be at least 1"), (["--epochs", "10000000"], "--epochs must be in"),
    (["--depth", "1000000000"], "--depth must be in [1, 32]"), (["--dense", "0"], "--dense must be in"),
    (["--cache-memory", "1e999G"], "--cache-memory must be a size"), (["--time-limit", "9" * 400], "--time-limit"),
])
def test_numeric_options_are_finite_and_in_range_before_tensorflow(tmp_path, data, args, fragment):
    with untouched(tmp_path):
        failed(train(data, tmp_path / "models", *args), fragment)


@pytest.mark.parametrize("args, fragment", [
    (["--val-split", "5"], "--val-split must be in (0, 1)"), (["--seed", "-1"], "--seed must be in"),
    (["--seed", str(2**32)], "--seed must be in"), (["--max-pixels", "0"], "--max-pixels must be at least 1"),
])
def test_inspect_checks_its_numbers_too(tmp_path, data, args, fragment):
    with untouched(tmp_path):
        failed(cli("inspect", data, "--cache-dir", tmp_path / "c", *args), fragment)


def test_a_loss_that_becomes_nan_stops_training_without_a_finished_run(tmp_path, data, run_copy):
    before = tree(run_copy)
    with untouched(data):
        # an L2 penalty of 1e30 makes the loss overflow at once (SGD at lr 10 alone diverges only on some machines)
        failed(train(data, tmp_path / "models", "--name", "tiny", "--overwrite", "--optimizer", "sgd", "--lr", "10",
                     "--l2", "1e30", "--epochs", "10"), "loss became NaN or infinite", "Lower --lr (now 10)",
               "no run was saved")
    assert tree(run_copy) == before  # the earlier run of that name
    assert sorted(os.listdir(tmp_path / "models")) == ["tiny", "tiny.partial"]


def test_json_never_holds_nan():
    from transfer.runs import json_text

    text = json_text({"loss": math.nan, "values": [1.0, math.inf, -math.inf], "ok": 0.5})
    assert json.loads(text) == {"loss": None, "values": [1.0, None, None], "ok": 0.5}


def test_nan_predictions_are_an_error_not_a_label(tmp_path):
    import numpy as np

    from transfer.errors import RunError
    from transfer.prediction import predict
    from transfer.runners import LoadedModel

    image = write_image(str(tmp_path / "x.png"), COLOURS["red"])
    broken = LoadedModel("broken.keras", "keras", ["a", "b"], (8, 8), "squash",
                         lambda batch: np.full((len(batch), 2), np.nan, np.float32))
    with pytest.raises(RunError, match="NaN or infinite probabilities"):
        predict(broken, [image])


# ---- resources are checked before allocation -------------------------------------------------------------------------

@pytest.mark.parametrize("args, fragments", [
    (["--image-size", "100000"], ["100000x100000 px", "Lower --image-size or --batch-size"]),
    (["--width", "1000"], ["parameters", "(or --width)"]),
    (["--image-size", "4096", "--batch-size", "100000"], ["a batch of 100000 images"]),
    (["--backbone", "inceptionv3", "--weights", "none", "--image-size", "60000"], ["60000x60000"]),
])
def test_runs_that_cannot_fit_in_memory_are_refused_with_the_estimate(tmp_path, data, args, fragments):
    with untouched(tmp_path):
        failed(train(data, tmp_path / "models", *args), "this run needs at least", "GiB of memory", *fragments)


def test_ordinary_settings_pass_the_memory_check():
    from transfer import backbones
    from transfer.config import TrainConfig
    from transfer.preflight import check_memory

    for name, size, batch in (("inceptionv3", 299, 32), ("resnet50", 600, 32), ("efficientnetb0", 600, 32),
                              ("smallvgg", 80, 32)):
        spec, config = backbones.resolve(TrainConfig(data_dir="x", backbone=name, image_size=size, batch_size=batch,
                                                     weights="none"))
        check_memory(spec, config, available=4 << 30)  # a small laptop


# ---- library boundaries check types ----------------------------------------------------------------------------------

def test_library_functions_check_their_arguments(tmp_path, run):
    import pathlib

    import transfer
    from transfer.errors import ConfigError

    import transfer.reports.evaluate  # noqa: F401  (imports transfer.prediction: transfer.predict must stay a function)

    folder = tmp_path / "in"
    write_image(str(folder / "x.png"), COLOURS["green"])
    for one in (str(folder), pathlib.Path(folder), str(folder / "x.png")):
        result = transfer.predict(run["run"], one)
        assert [p.label for p in result.predictions] == ["green"] and not result.failures
    for bad in (42, {"a": 1}, [42]):
        with pytest.raises(ConfigError, match="path"):
            transfer.predict(run["run"], bad)
    with pytest.raises(ConfigError, match="top_k"):
        transfer.predict(run["run"], [str(folder)], top_k="3")
    for version in (0, 2**64, "1", True):
        with pytest.raises(ConfigError, match="--version must be a whole number"):
            transfer.export(run["run"], output=str(tmp_path / "s"), version=version)
    assert not os.path.exists(tmp_path / "s")


@pytest.mark.parametrize("values, fragment", [
    ({"epochs": "5"}, "--epochs must be a whole number or none; got '5' (str)"), ({"lr": "0.1"}, "--lr must be a number"),
    ({"batch_size": 8.0}, "--batch-size must be a whole number"), ({"overwrite": "yes"}, "--overwrite must be true"),
    ({"dense": (64, "x")}, "--dense must be a list of whole numbers"),
    ({"seed": True}, "--seed must be a whole number"),
    ({"data_dir": 3}, "DATA_DIR must be text"), ({"lr": float("nan")}, "--lr must be a finite number"),
])
def test_train_config_types_are_config_errors(tmp_path, values, fragment):
    import transfer
    from transfer.errors import ConfigError

    config = transfer.TrainConfig(**{"data_dir": str(tmp_path), "output_dir": str(tmp_path / "m"), **values})
    with pytest.raises(ConfigError) as error:
        transfer.train(config)
    assert fragment in str(error.value)


# ---- file errors become messages -------------------------------------------------------------------------------------

def test_output_that_is_a_file(tmp_path, data, run):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    with untouched(tmp_path):
        failed(train(data, blocker, "--name", "r"), "--output-dir", "is a file, not a folder")
        failed(train(data, blocker / "sub", "--name", "r"), "is a file, not a folder")
        failed(cli("export", run["run"], "--output", blocker), "--output", "is a file, not a folder")


def _read_only(folder):
    """Run the CLI with ``folder`` a read-only file system (a mount namespace), or skip where that is not allowed."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("cannot make a read-only mount here (unshare -rm)")
    os.makedirs(folder, exist_ok=True)
    return ["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o ro none "{folder}" && exec "$@"', "sh", sys.executable,
            "-m", "cli"]


def test_output_on_a_read_only_file_system(tmp_path, data, run):
    prefix = _read_only(tmp_path / "ro")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
    for args, option in ((["train", data, *TINY, "-o", tmp_path / "ro" / "models"], "--output-dir"),
                         (["export", run["run"], "--output", tmp_path / "ro" / "serving"], "--output")):
        proc = subprocess.run(prefix + [str(a) for a in args], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=180)
        failed(proc, option, "cannot be written", "read-only file system")


def _zip_of_nothing(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x", "y")


@pytest.mark.parametrize("damage, fragment", [
    (lambda p: open(p, "r+b").truncate(1000), "is not a valid .keras file (truncated or another format)"),
    (lambda p: open(p, "w").write("hello"), "is not a valid .keras file"),
    (lambda p: _zip_of_nothing(p), "cannot load the model"),
])
def test_a_damaged_model_file_is_named(tmp_path, run_copy, damage, fragment):
    damage(os.path.join(run_copy, "model.keras"))
    image = write_image(str(tmp_path / "x.png"), COLOURS["red"])
    failed(cli("predict", run_copy, image), fragment, "model.keras")


def test_a_damaged_saved_model_is_named(tmp_path, run_copy):
    succeeded(cli("export", run_copy, "--output", tmp_path / "serving", "-q"))
    with open(tmp_path / "serving" / "tiny" / "1" / "saved_model.pb", "wb") as f:
        f.write(b"garbage")
    image = write_image(str(tmp_path / "x.png"), COLOURS["red"])
    failed(cli("predict", tmp_path / "serving" / "tiny", image), "is not a valid SavedModel")


def test_run_and_export_files_follow_the_umask(tmp_path, run):
    for dirpath, dirnames, filenames in os.walk(run["run"]):
        for name in filenames:
            assert stat.S_IMODE(os.stat(os.path.join(dirpath, name)).st_mode) == 0o640, name
    succeeded(cli("export", run["run"], "--output", tmp_path / "serving", "-q", umask=0o022))
    for dirpath, dirnames, filenames in os.walk(tmp_path / "serving"):
        for name in filenames:
            assert stat.S_IMODE(os.stat(os.path.join(dirpath, name)).st_mode) == 0o644, name
        for name in dirnames:
            assert stat.S_IMODE(os.stat(os.path.join(dirpath, name)).st_mode) == 0o755, name


def test_export_does_not_write_into_a_folder_of_other_files(tmp_path, run):
    (tmp_path / "docs" / "tiny").mkdir(parents=True)
    (tmp_path / "docs" / "tiny" / "labels.txt").write_text("the user's labels")
    with untouched(tmp_path):
        failed(cli("export", run["run"], "--output", tmp_path / "docs"), "holds files that are not exports",
               "labels.txt")
        failed(cli("export", run["run"], "--output", tmp_path / "s", "--name", "x.partial"), "plain folder name")


# ---- messages: right, and before TensorFlow where TensorFlow is not needed -------------------------------------------

def test_predict_has_the_max_pixels_it_mentions(tmp_path, run):
    image = write_image(str(tmp_path / "big.png"), COLOURS["red"], size=64)
    proc = cli("predict", run["run"], image, "--max-pixels", "1000")
    assert proc.returncode == 1 and "over the limit of 1000 (--max-pixels)" in proc.stderr
    assert "Traceback" not in proc.stderr
    ok = succeeded(cli("predict", run["run"], image, "--max-pixels", "5000", "--batch-size", str(10**20)))
    assert ok.stdout.split("\t")[1] == "red"


def test_json_and_csv_together_is_a_usage_error(tmp_path, run):
    failed(cli("predict", run["run"], tmp_path, "--json", "--csv"), "--json and --csv cannot be used together", code=2)


def _tensorflow_free(args, cwd=ROOT):
    """Run the CLI in a process that reports, after the command, whether it imported TensorFlow."""
    code = ("import sys, cli\n"
            f"sys.argv = ['transfer'] + {[str(a) for a in args]!r}\n"
            "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
            "print('TF_LOADED' if 'tensorflow' in sys.modules else 'TF_ABSENT', file=sys.stderr)")
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args, fragment", [
    (["--cache-dir", "{data}/cache"], "inside the dataset"), (["--backbone", "resnet51"], "unknown backbone"),
    (["--epochs", "0"], "nothing to train"),
    (["--name", "tiny"], "already exists"), (["--image-size", "100000"], "this run needs at least"),
    (["--name", "photos", "-o", "{parent}"], "would be the dataset folder"), (["--lr", "inf"], "--lr"),
])
def test_errors_that_need_no_tensorflow_come_before_it(tmp_path, run, args, fragment):
    args = [a.format(parent=os.path.dirname(run["data"]), data=run["data"]) for a in args]
    proc = _tensorflow_free(["train", run["data"], *TINY, "-o", os.path.dirname(run["run"]), *args])
    assert fragment in proc.stderr and proc.stderr.strip().endswith("TF_ABSENT"), proc.stderr[-2000:]


@pytest.mark.parametrize("splits, fragment", [({"val": 2, "test": 2}, "but no train/"),
                                              ({"train": 2, "val": 2, "validation": 2}, "two folders for the val")])
def test_layout_errors_come_before_tensorflow(tmp_path, splits, fragment):
    data = make_dataset(tmp_path / "layout", splits=splits)
    proc = _tensorflow_free(["train", data, *TINY, "-o", str(tmp_path / "models")])
    assert fragment in proc.stderr and proc.stderr.strip().endswith("TF_ABSENT"), proc.stderr[-2000:]


def test_os_errors_that_escape_become_messages(monkeypatch, runner):
    from cli import main

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", "/data/models/r.partial/model.keras")

    monkeypatch.setattr("transfer.preflight.check", full)
    result = runner.invoke(main, ["train", ROOT])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Error: cannot use '/data/models/r.partial/model.keras': No space left on device" in result.output
