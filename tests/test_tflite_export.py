"""export --format tflite: every quantization verified against Keras, predicted like the run, failing cleanly."""

import json
import os
import shutil

import pytest
from click.testing import CliRunner

from cli import main
from conftest import COLOURS, make_dataset

pytestmark = pytest.mark.slow

QUANTIZATIONS = ["none", "float16", "dynamic", "int8"]
TRAIN = {
    # a scratch net: fast, and the float32 agreement must be exact
    "small": ["--backbone", "smallcnn", "--image-size", "32", "--epochs", "6", "--augment", "none", "--batch-size", "8"],
    # what people deploy: the pretrained EfficientNet-Lite0 (ImageNet weights from pip)
    # --lr 0.01: confident after 2 epochs; at the default 1e-3, near-ties flipped by 0.04 failed dynamic and int8
    "lite": ["--image-size", "96", "--epochs", "2", "--batch-size", "8", "--lr", "0.01"],
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Both runs, trained once for the module on generated colour photos."""
    root = tmp_path_factory.mktemp("tflite")
    found = {}
    for name, options in TRAIN.items():
        data = make_dataset(root / f"data-{name}", per_class=20, size=int(options[options.index("--image-size") + 1]))
        result = CliRunner().invoke(main, ["train", data, *options, "-o", str(root / "models"), "--name", name,
                                           "--quiet"])
        assert result.exit_code == 0, result.output
        found[name] = {"run": str(root / "models" / name), "data": data}
    return found


@pytest.fixture(scope="module")
def exported(trained):
    """``exported(run, quantize)``: the --json of ``transfer export RUN --format tflite``, made once."""
    done = {}

    def export(name, quantize):
        if (name, quantize) not in done:
            result = CliRunner().invoke(main, ["export", trained[name]["run"], "--format", "tflite", "--quantize",
                                               quantize, "--json", "--quiet"])
            assert result.exit_code == 0, result.output
            done[name, quantize] = json.loads(result.stdout)
        return done[name, quantize]

    return export


def _labels(model, images):
    result = CliRunner().invoke(main, ["predict", model, images, "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    return {p["path"]: p["label"] for p in json.loads(result.stdout)["predictions"]}


@pytest.fixture(scope="module")
def from_run(trained):
    """``from_run(name)``: the labels the run itself predicts for its photos, predicted once for the module."""
    done = {}

    def labels(name):
        if name not in done:
            done[name] = _labels(trained[name]["run"], trained[name]["data"])
        return done[name]

    return labels


#: every quantization of the small net; of Lite0 (each conversion ~10 s of CPU) the float32 one and the one that
#: changes it most, int8 (float16 converts as float32 does, halving the stored weights; dynamic quantizes the weights
#: as int8 does, and the export's own check refuses any that misses its threshold)
CASES = [("small", q) for q in QUANTIZATIONS] + [("lite", q) for q in ("none", "int8")]


@pytest.mark.parametrize("name, quantize", CASES)
def test_export_meets_its_threshold_and_predicts_like_the_run(trained, exported, from_run, name, quantize):
    from transfer.export.verify import THRESHOLDS

    info = exported(name, quantize)
    least, most = THRESHOLDS[quantize]
    assert info["top1_agreement"] >= least and info["images"] == 12  # every validation image (4 per class)
    assert most is None or info["max_abs_diff"] < most
    folder = os.path.join(trained[name]["run"], "export", name, f"tflite-{quantize}")
    assert info["path"] == os.path.join(folder, "model.tflite") and os.path.getsize(info["path"]) == info["size"]
    assert open(os.path.join(folder, "labels.txt")).read().split() == sorted(COLOURS)
    metadata = json.load(open(os.path.join(folder, "metadata.json")))
    assert metadata["quantization"] == quantize and metadata["labels"] == sorted(COLOURS)
    assert metadata["verification"]["top1_agreement"] == info["top1_agreement"]
    assert metadata["source"] == os.path.abspath(trained[name]["run"])
    expected_input = ("uint8", 1.0, 0) if quantize == "int8" else ("float32", 0.0, 0)
    assert (metadata["input"]["dtype"], metadata["input"]["scale"], metadata["input"]["zero_point"]) == expected_input
    assert len(from_run(name)) == 60 and _labels(info["path"], trained[name]["data"]) == from_run(name)


def test_int8_is_less_than_a_third_of_float32_for_lite0(exported):
    assert exported("lite", "int8")["size"] < 0.35 * exported("lite", "none")["size"]


def test_int8_calibrates_on_another_folder_with_data(trained, runner, tmp_path):
    result = runner.invoke(main, ["export", trained["small"]["run"], "--format", "tflite", "--quantize", "int8",
                                  "--data", trained["small"]["data"], "-o", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "top-1 agreement with the Keras model" in result.stdout and "max |Δp|" in result.stdout
    assert (tmp_path / "small" / "tflite-int8" / "model.tflite").is_file()


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_predict_on_a_damaged_tflite_is_a_clear_error(trained, exported, runner, tmp_path, damage):
    source = os.path.dirname(exported("small", "none")["path"])
    shutil.copytree(source, tmp_path / "copy")
    model = tmp_path / "copy" / "model.tflite"
    content = model.read_bytes()
    model.write_bytes(content[:len(content) // 2] if damage == "truncated" else b"not a flatbuffer" * 100)
    result = runner.invoke(main, ["predict", str(model), trained["small"]["data"]])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "is not a valid TensorFlow Lite image model" in result.output and "Traceback" not in result.output


def test_failed_verification_writes_nothing(trained, runner, tmp_path, monkeypatch):
    import importlib

    monkeypatch.setitem(importlib.import_module("transfer.export.verify").THRESHOLDS, "dynamic", (1.01, None))  # no model can agree better than 100 %
    result = runner.invoke(main, ["export", trained["small"]["run"], "--format", "tflite", "--quantize", "dynamic",
                                  "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "disagrees with the Keras model on 12 images" in result.output and "nothing was written" in result.output
    assert not os.path.exists(tmp_path / "out" / "small") or os.listdir(tmp_path / "out" / "small") == []


def test_a_wrong_conversion_is_caught(trained, runner, tmp_path, monkeypatch):
    """A .tflite of other weights (what from_concrete_functions once froze) fails the float32 check."""
    import keras

    from transfer.export import tflite

    convert = tflite.convert

    def scrambled(model, *args, **kwargs):
        clone = keras.models.clone_model(model)  # the same network, freshly initialised weights
        return convert(clone, *args, **kwargs)

    monkeypatch.setattr(tflite, "convert", scrambled)
    result = runner.invoke(main, ["export", trained["small"]["run"], "--format", "tflite", "-o", str(tmp_path)])
    assert result.exit_code == 1 and "the none .tflite disagrees" in result.output
    assert not (tmp_path / "small" / "tflite-none").exists()


def test_tflite_refuses_a_folder_of_the_users_files_and_saved_model_options(trained, runner, tmp_path):
    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "notes.txt").write_text("mine")
    result = runner.invoke(main, ["export", trained["small"]["run"], "--format", "tflite", "-o", str(tmp_path)])
    assert result.exit_code == 1 and "holds files that are not exports of transfer" in result.output
    assert os.listdir(tmp_path / "small") == ["notes.txt"]
    result = runner.invoke(main, ["export", trained["small"]["run"], "--quantize", "int8"])
    assert result.exit_code == 2 and "--format tflite only" in result.output


def test_int8_input_is_the_pixels_whatever_the_calibration_photos_range(trained):
    """Dark calibration photos alone would make uint8 input scale 60/255: camera pixels would be misread."""
    import keras
    import numpy as np

    from transfer import layers  # noqa: F401  (the model file's custom layers)
    from transfer.export import tflite
    from transfer.runners import TFLiteRunner

    model = keras.saving.load_model(os.path.join(trained["small"]["run"], "model.keras"))
    dark = np.random.default_rng(0).uniform(0, 60, (10, 32, 32, 3)).astype(np.float32)
    runner = TFLiteRunner(tflite.convert(model, "int8", dark))
    assert np.dtype(runner.input["dtype"]) == np.uint8 and runner.input["quantization"] == (1.0, 0)


def test_tflite_exports_go_with_their_run_on_overwrite_and_beside_saved_models(trained, exported, runner, tmp_path):
    from transfer import runs

    exported("small", "none")
    copy = shutil.copytree(trained["small"]["run"], tmp_path / "small")
    assert runs.replace_problem(str(copy)) is None  # train --overwrite may replace it, exports and all
    result = runner.invoke(main, ["export", str(copy), "--quiet"])
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(copy / "export" / "small"))[:2] == ["1", "labels.txt"]
    (copy / "export" / "small" / "tflite-none" / "metadata.json").unlink()  # no longer transfer's export
    assert "files that the run did not write (export)" in runs.replace_problem(str(copy))
