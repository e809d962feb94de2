"""Hostile and careless input, second round, the data half (issue 21): every public function reads a string as one
path or name, no output lands in a dataset or another run, ``--resume`` notices changed data and resumes the folder
asked for, ``export --data`` is honoured, and the tracebacks and wrong advice found became one true ``Error:`` line.

Library calls run in a child process with a timeout (a string read per character would walk the file system);
CLI cases run ``transfer`` as a user types it. Every case checks that the dataset is unchanged, file by file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import zipfile

import pytest

import transfer
from conftest import COLOURS, make_dataset, write_image
from test_hardening import ROOT, cli, failed, succeeded
from test_resume import start, stop_after_backup
from transfer import runs

TINY = ["--backbone", "smallcnn", "--image-size", "32", "--augment", "none", "--fine-tune-epochs", "0"]


def snapshot(folder) -> dict[str, tuple[int, str]]:
    """Every file under ``folder`` -> (size, sha256): what "the dataset is unchanged" means here."""
    found = {}
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = (os.path.getsize(path), hashlib.sha256(f.read()).hexdigest())
    return found


# --- the library: one rule for paths and names, one guard for outputs -----------------------------------------------

#: case -> (the public name it calls, a Python expression, ("error", a fragment of its message) or ("value", result))
#: names in the expressions: RUN (a run folder), DATA (its dataset), IMG (one image), OUT (a new folder),
#: OTHER (another dataset), SPLIT (a train/ val/ dataset), FLAT (a folder of images), LAYER (a conv layer of RUN)
CASES = {
    "predict-none": ("predict", "transfer.predict(RUN, None)", ("error", "inputs must be")),
    "predict-int": ("predict", "transfer.predict(RUN, 5)", ("error", "inputs must be")),
    "predict-dict": ("predict", "transfer.predict(RUN, {IMG: 1})", ("error", "inputs must be")),
    "predict-bad-item": ("predict", "transfer.predict(RUN, [IMG, 5])", ("error", "each item of inputs")),
    "predict-model-none": ("predict", "transfer.predict(None, [IMG])", ("error", "model must be a path")),
    "predict-str": ("predict", "len(transfer.predict(RUN, IMG).predictions)", ("value", 1)),
    "predict-pathlike": ("predict", "len(transfer.predict(pathlib.Path(RUN), pathlib.Path(IMG)).predictions)",
                         ("value", 1)),
    "predict-generator": ("predict", "len(transfer.predict(RUN, (p for p in [IMG])).predictions)", ("value", 1)),
    "predict-bytes": ("predict", "len(transfer.predict(RUN, os.fsencode(IMG)).predictions)", ("value", 1)),
    "load_model-none": ("load_model", "transfer.load_model(None)", ("error", "model must be a path")),
    "load_model-list": ("load_model", "transfer.load_model([RUN])", ("error", "model must be a path")),
    "load_run-none": ("load_run", "transfer.load_run(None)", ("error", "path must be a path")),
    "load_run-pathlike": ("load_run", "transfer.load_run(pathlib.Path(RUN)).labels", ("value", sorted(COLOURS))),
    "evaluate-none": ("evaluate", "transfer.evaluate(RUN, None)", ("error", "data_dir must be a path")),
    "evaluate-list": ("evaluate", "transfer.evaluate(RUN, [DATA])", ("error", "data_dir must be a path")),
    "evaluate-split": ("evaluate", "transfer.evaluate(RUN, DATA, split=1)", ("error", "split must be a name")),
    "evaluate-output": ("evaluate", "transfer.evaluate(RUN, DATA, output=5)", ("error", "output must be a path")),
    "evaluate-into-data": ("evaluate", "transfer.evaluate(RUN, OTHER, output=DATA + '/ev')",
                           ("error", "inside the dataset folder")),
    "explain-none": ("explain", "transfer.explain(RUN, None)", ("error", "inputs must be")),
    "explain-layer-list": ("explain", "transfer.explain(RUN, [IMG], layer=['conv'])",
                           ("error", "layer must be a name")),
    "explain-target-int": ("explain", "transfer.explain(RUN, [IMG], target=0)", ("error", "target must be a name")),
    "explain-output-int": ("explain", "transfer.explain(RUN, [IMG], output=5)", ("error", "output must be a path")),
    "explain-str": ("explain", "len(transfer.explain(RUN, IMG, output=OUT + '/e').explanations)", ("value", 1)),
    "explain-into-recorded-data": ("explain", "transfer.explain(RUN, IMG, output=DATA + '/x')",
                                   ("error", "inside the dataset folder")),
    "explain-into-class": ("explain", "transfer.explain(RUN, IMG, output=DATA + '/red/x')",
                           ("error", "inside the dataset folder")),
    "explain-into-other-dataset": ("explain", "transfer.explain(RUN, IMG, output=OTHER + '/x')",
                                   ("error", "holds class folders of images")),
    "explain-onto-other-dataset": ("explain", "transfer.explain(RUN, IMG, output=OTHER)",
                                   ("error", "holds class folders of images")),
    "explain-into-split-dataset": ("explain", "transfer.explain(RUN, IMG, output=SPLIT + '/x')",
                                   ("error", "holds class folders of images")),
    "explain-into-inputs": ("explain", "transfer.explain(RUN, FLAT, output=FLAT + '/heat')",
                            ("error", "inside the dataset folder")),
    "explain-into-run": ("explain", "transfer.explain(RUN, IMG, output=RUN + '/x')", ("error", "the run folder")),
    "visualize-int": ("visualize", "transfer.visualize(RUN, 5)", ("error", "layers must be")),
    "visualize-dict": ("visualize", "transfer.visualize(RUN, {LAYER: 1}, image=IMG)", ("error", "layers must be")),
    "visualize-image-list": ("visualize", "transfer.visualize(RUN, image=[IMG])", ("error", "image must be a path")),
    "visualize-output-int": ("visualize", "transfer.visualize(RUN, output=5)", ("error", "output must be a path")),
    "visualize-str": ("visualize", "list(transfer.visualize(RUN, LAYER, image=IMG, output=OUT + '/v').activations)",
                      ("value", "[LAYER]")),
    "visualize-into-data": ("visualize", "transfer.visualize(RUN, output=DATA + '/v')",
                            ("error", "inside the dataset folder")),
    "visualize-into-run": ("visualize", "transfer.visualize(RUN, output=RUN)", ("error", "the run folder")),
    "export-model-none": ("export", "transfer.export(None)", ("error", "model must be a path")),
    "export-output-int": ("export", "transfer.export(RUN, output=5)", ("error", "output must be a path")),
    "export-name-list": ("export", "transfer.export(RUN, name=['a'])", ("error", "name must be a name")),
    "export-data-int": ("export", "transfer.export(RUN, data=5)", ("error", "data must be a path")),
    "export-into-data": ("export", "transfer.export(RUN, output=DATA)", ("error", "the dataset folder")),
    "export-into-given-data": ("export", "transfer.export(RUN, output=OTHER + '/e', data=OTHER)",
                               ("error", "inside the dataset folder")),
    "export-into-run": ("export", "transfer.export(RUN, output=RUN)", ("error", "the run folder")),
    "export_tflite-quantize": ("export_tflite", "transfer.export_tflite(RUN, quantize=None)",
                               ("error", "quantize must be a name")),
    "export_tflite-data-list": ("export_tflite", "transfer.export_tflite(RUN, data=[DATA])",
                                ("error", "data must be a path")),
    "export_tflite-into-data": ("export_tflite", "transfer.export_tflite(RUN, output=DATA + '/red')",
                                ("error", "inside the dataset folder")),
    "export_onnx-output-int": ("export_onnx", "transfer.export_onnx(RUN, output=5)",
                               ("error", "output must be a path")),
    "doctor-none": ("doctor", "transfer.doctor(None)", ("error", "data_dir must be a path")),
    "doctor-list": ("doctor", "transfer.doctor([DATA])", ("error", "data_dir must be a path")),
    "doctor-backbone-list": ("doctor", "transfer.doctor(DATA, backbone=['a'])", ("error", "backbone must be a name")),
    "doctor-output-int": ("doctor", "transfer.doctor(DATA, output=5)", ("error", "output must be a path")),
    "doctor-into-data": ("doctor", "transfer.doctor(DATA, output=DATA + '/red/d')",
                         ("error", "inside the dataset folder")),
    "doctor-into-other": ("doctor", "transfer.doctor(DATA, output=OTHER + '/d')",
                          ("error", "holds class folders of images")),
    "make_server-model-none": ("make_server", "transfer.make_server(None, port=0)", ("error", "model must be a path")),
    "train-dict": ("train", "transfer.train({'data_dir': DATA})", ("error", "config must be a transfer.TrainConfig")),
    "train-none": ("train", "transfer.train(None)", ("error", "config must be a transfer.TrainConfig")),
    "train-output-in-data": ("train", "transfer.train(transfer.TrainConfig(data_dir=DATA, output_dir=DATA + '/m', "
                                      "backbone='smallcnn'))", ("error", "inside the dataset folder")),
    "train-output-in-other": ("train", "transfer.train(transfer.TrainConfig(data_dir=DATA, output_dir=OTHER + '/m', "
                                       "backbone='smallcnn'))", ("error", "holds class folders of images")),
    "TrainConfig-data-int": ("TrainConfig", "transfer.TrainConfig(data_dir=5).validate()", ("error", "DATA_DIR must")),
    "TrainConfig-data-list": ("TrainConfig", "transfer.TrainConfig(data_dir=[DATA]).validate()",
                              ("error", "DATA_DIR must")),
}
#: public names that take no path or name
NO_INPUTS = {"TransferError", "TrainResult", "backbones"}

CHILD = textwrap.dedent("""
    import json, os, pathlib, sys
    import transfer
    from transfer.errors import TransferError
    from transfer.reports.explain import walk, feature_taps
    RUN, DATA, IMG, OUT, OTHER, SPLIT, FLAT = sys.argv[1:8]
    LAYER = next(n for n in reversed(feature_taps(walk(transfer.load_model(RUN).keras_model,
                                                       __import__("numpy").zeros((1, 32, 32, 3), "float32"))[1])))
    results = {}
    for key, (name, expression, expected) in json.loads(sys.stdin.read()).items():
        try:
            value = eval(expression)
            want = eval(expected[1]) if isinstance(expected[1], str) and expected[0] == "value" else expected[1]
            results[key] = {"value": value == want, "got": repr(value)}
        except TransferError as error:
            results[key] = {"error": str(error)}
        except Exception as error:
            results[key] = {"raw": f"{type(error).__name__}: {error}"}
    print(json.dumps(results))
""")


@pytest.fixture(scope="module")
def library(trained_run, tmp_path_factory):
    """Every case of :data:`CASES`, run in one child process (with a timeout), and the datasets before and after."""
    root = tmp_path_factory.mktemp("library")
    other = make_dataset(root / "other", per_class=2)
    split = make_dataset(root / "split", splits={"train": 2, "val": 1})
    flat = os.path.dirname(write_image(str(root / "flat" / "a.png"), COLOURS["red"]))
    image = write_image(str(root / "one" / "photo.png"), COLOURS["blue"])
    folders = [trained_run["data"], other, split, flat]
    before = [snapshot(f) for f in folders]
    proc = subprocess.run([sys.executable, "-c", CHILD, trained_run["run"], trained_run["data"], image,
                           str(root / "out"), other, split, flat], input=json.dumps(CASES), cwd=root / "one",
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1]), before, [snapshot(f) for f in folders]


def test_every_public_function_has_cases():
    """A new public function is caught here until it has its cases (strings, None, numbers, lists)."""
    public = {name for name in transfer.__all__ if callable(getattr(transfer, name))} - NO_INPUTS
    assert public <= {name for name, _, _ in CASES.values()}


@pytest.mark.parametrize("case", list(CASES))
def test_a_string_is_one_path_and_a_wrong_type_a_clear_error(library, case):
    results, before, after = library
    result, (_, _, (kind, expected)) = results[case], CASES[case]
    assert "raw" not in result, result  # a raw Python error (TypeError, AttributeError...) is a traceback in a notebook
    if kind == "error":
        assert "error" in result and expected in result["error"], result
    else:
        assert result.get("value") is True, result
    assert after == before  # no case wrote into a dataset


# --- the CLI: one Error line, no traceback, the dataset untouched --------------------------------------------------

@pytest.mark.parametrize("command", [
    ["explain", "{run}", "{image}", "-o", "{data}/heat"],
    ["visualize", "{run}", "-o", "{data}"],
    ["export", "{run}", "-o", "{data}"],
    ["export", "{run}", "--format", "tflite", "-o", "{data}/red/x"],
    ["evaluate", "{run}", "{data}", "-o", "{data}/eval"],
], ids=["explain", "visualize", "export", "export-tflite", "evaluate"])
def test_no_command_writes_into_the_dataset(trained_run, tmp_path, command):
    data = trained_run["data"]
    image = write_image(str(tmp_path / "x.png"), COLOURS["red"])
    before = snapshot(data)
    args = [part.format(run=trained_run["run"], data=data, image=image) for part in command]
    failed(cli(*args), "dataset folder", "--output")
    assert snapshot(data) == before


def test_train_refuses_an_output_dir_in_any_dataset(tmp_path):
    data, other = make_dataset(tmp_path / "data", per_class=2), make_dataset(tmp_path / "other", per_class=2)
    before = snapshot(tmp_path)
    failed(cli("train", data, *TINY, "-o", os.path.join(other, "runs")), "--output-dir", "holds class folders")
    assert snapshot(tmp_path) == before


# --- resume ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def partial(tmp_path_factory):
    """An unfinished run ``r`` (stopped by Ctrl-C after its first epoch) on its own small dataset."""
    root = tmp_path_factory.mktemp("partial")
    data = make_dataset(root / "colours", per_class=6)
    models = str(root / "models")
    proc = start("train", data, *TINY, "--epochs", "6", "--batch-size", "2", "-o", models, "--name", "r",
                 "--cache-dir", str(root / "cache"))
    code, err = stop_after_backup(proc, os.path.join(models, "r" + runs.STAGING_SUFFIX), 1, signal.SIGINT)
    assert code == 130, err[-3000:]
    return {"data": data, "models": models, "staging": os.path.join(models, "r" + runs.STAGING_SUFFIX)}


def copy_partial(partial, name):
    target = os.path.join(partial["models"], name + runs.STAGING_SUFFIX)
    shutil.copytree(partial["staging"], target)
    return target


def test_resume_refuses_changed_data_and_names_the_changes(partial):
    data, staging = partial["data"], partial["staging"]
    kept = snapshot(staging)
    removed, modified = os.path.join(data, "red", "000.png"), os.path.join(data, "blue", "001.png")
    saved = {path: (open(path, "rb").read(), os.stat(path)) for path in (removed, modified)}
    try:
        os.remove(removed)
        with open(modified, "ab") as f:
            f.write(b"\0")
        write_image(os.path.join(data, "green", "new.png"), COLOURS["green"])
        error = failed(cli("train", "--resume", "--name", "r", "-o", partial["models"]), "--resume", "changed",
                       "1 added (green/new.png)", "1 removed (red/000.png)", "1 modified (blue/001.png)",
                       "without --resume")
        assert "out of memory" not in error
    finally:
        os.remove(os.path.join(data, "green", "new.png"))
        for path, (content, info) in saved.items():
            with open(path, "wb") as f:
                f.write(content)
            os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert snapshot(staging) == kept  # the unfinished run is as it was: it can still be resumed


def test_resume_refuses_data_touched_in_place(partial):
    """Same bytes, new modification time (an editor saved it, a copy without -p): the data may differ; refused."""
    path = os.path.join(partial["data"], "red", "002.png")
    info = os.stat(path)
    try:
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))
        failed(cli("train", "--resume", "--name", "r", "-o", partial["models"]), "1 modified (red/002.png)")
    finally:
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


def test_resume_of_a_damaged_backup_is_one_error(partial):
    for damaged, name in ((runs.WEIGHTS_FILE, "npz"), (runs.STATE_FILE, "state"), (runs.CHECKPOINT_FILE, "h5")):
        staging = copy_partial(partial, name)
        backup = runs.latest_backup(staging)
        with open(os.path.join(backup, damaged), "r+b") as f:
            f.truncate(max(1, os.path.getsize(f.name) // 2))
        failed(cli("train", "--resume", "--name", name, "-o", partial["models"]), "--resume", "damaged", damaged,
               "--overwrite")


def test_resume_name_b_resumes_b_not_the_run_its_copy_came_from(partial):
    kept = snapshot(partial["staging"])
    copy_partial(partial, "b")
    succeeded(cli("train", "--resume", "--name", "b", "-o", partial["models"], "--quiet"))
    assert os.path.isfile(os.path.join(partial["models"], "b", runs.MODEL_FILE))
    assert not os.path.exists(os.path.join(partial["models"], "b" + runs.STAGING_SUFFIX))
    assert not os.path.exists(os.path.join(partial["models"], "r"))
    assert snapshot(partial["staging"]) == kept
    assert runs.FINGERPRINT_FILE not in os.listdir(os.path.join(partial["models"], "b"))


# --- export --data ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["saved_model", "tflite"])
def test_export_data_is_used_and_reported_for_a_run_folder(trained_run, tmp_path, fmt):
    checks = make_dataset(tmp_path / "checks", per_class=3)  # 9 images; the run's own validation split is larger
    extra = ["--quantize", "int8"] if fmt == "tflite" else []
    proc = succeeded(cli("export", trained_run["run"], "--format", fmt, *extra, "--data", checks,
                         "-o", tmp_path / "out", "--json"))
    result = json.loads(proc.stdout)
    assert result["images"] == 9 and result["checked_on"] == f"--data {checks}"
    if fmt == "tflite":
        assert result["calibrated_on"] == f"--data {checks}"


# --- tracebacks and wrong advice -------------------------------------------------------------------------------------

def test_config_that_is_not_a_small_regular_file_is_one_true_error(tmp_path):
    huge = tmp_path / "huge.json"
    huge.write_text('{"epochs": 1, "x": "' + "a" * 2**21 + '"}')
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    for path, fragment in (("/dev/zero", "not a regular file"), (huge, "too large"), (deep, "not valid JSON")):
        error = failed(cli("train", "--config", path, timeout=120), "--config", fragment)
        assert "out of memory" not in error and "--batch-size" not in error


def test_a_crafted_pth_cannot_fill_the_memory(tmp_path):
    from test_torch_weights import ODict, S0, dumps, legacy_bytes, tensor, write
    from transfer.backbones.torch_weights import load_state_dict
    from transfer.errors import WeightsError

    repeated = ODict([("w", tensor("FloatStorage", "0", 12, 0, (100_000, 100_000), (0, 0)))])  # 40 GB of one value
    with pytest.raises(WeightsError, match="more than its storage holds"):
        load_state_dict(write(tmp_path, "repeated.pth", legacy_bytes(repeated, {"0": S0})))
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", dumps(repeated) + bytes(20_000_000))
    with pytest.raises(WeightsError, match="would unpack to more bytes than the file holds"):
        load_state_dict(str(bomb))


@pytest.mark.slow
def test_backbone_with_a_lambda_layer_advises_unsafe(tmp_path):
    from test_safe_loading import _lambda_model

    data = make_dataset(tmp_path / "data", per_class=3)
    model = _lambda_model(str(tmp_path))
    error = failed(cli("train", data, "--backbone", model, "--epochs", "1", "-o", tmp_path / "m"), "--unsafe",
                   "Lambda layer")
    assert "safe_mode" not in error


def test_max_pixels_above_pillows_limit_is_honoured(tmp_path, monkeypatch):
    from PIL import Image

    from transfer.errors import ImageError
    from transfer.data.images import open_rgb

    path = write_image(str(tmp_path / "big.png"), COLOURS["red"], size=64)  # 4096 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses over 2000 in open()
    with pytest.raises(ImageError) as refused:  # by Pillow's limit, said as ours, without contradiction
        open_rgb(path, max_pixels=100)
    assert "4096 pixels" in str(refused.value) and "limit of 100 " in str(refused.value)
    rgb, _ = open_rgb(path, max_pixels=5000)  # ours is higher than Pillow's, and decides
    assert rgb.size == (64, 64)
    with pytest.raises(ImageError, match="4096 pixels .* over the limit of 4000 "):
        open_rgb(path, max_pixels=4000)


def test_predict_csv_escapes_formulas_in_every_column(trained_run, tmp_path):
    """A file named like a formula, and its error: each cell that starts with = + - @ tab or CR gets a quote."""
    write_image(str(tmp_path / "=1+1.png"), COLOURS["red"])
    proc = cli("predict", trained_run["run"], "=1+1.png", "@SUM(A1)", "--csv", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    import csv
    import io

    rows = list(csv.reader(io.StringIO(proc.stdout)))
    cells = [cell for row in rows[1:] for cell in row if cell]
    assert cells and not any(cell[0] in "=+-@\t\r" for cell in cells), rows
    assert ["'@SUM(A1)", "", "", "", "file not found"] in rows
    from transfer.data import csv_row

    assert csv_row(["=a", "+b", "-c", "@d", "\te", "\rf", "ok", 0.5]) == ["'=a", "'+b", "'-c", "'@d", "'\te", "'\rf",
                                                                         "ok", "0.5"]
