"""export --format onnx: verified with onnxruntime, predicted like the run, refused by name when it cannot convert."""

import glob
import json
import os
import shutil
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from conftest import COLOURS, make_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = os.path.join(ROOT, "..", "shared", "data", "cats_vs_dogs", "validation")
needs_photos = pytest.mark.skipif(not os.path.isdir(PHOTOS),
                                  reason="the shared cats_vs_dogs photos are not beside the checkout")


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    """The conftest scratch run exported once as ONNX: the --json answer and the onnx/ folder."""
    out = tmp_path_factory.mktemp("onnx")
    result = CliRunner().invoke(main, ["export", trained_run["run"], "--format", "onnx", "-o", str(out), "--json",
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    return {"info": json.loads(result.stdout), "folder": out / "colours" / "onnx"}


def _photos(folder, per_class=4):
    """A few real cat and dog photos copied into ``folder``/<class>/."""
    for c in ("cats", "dogs"):
        os.makedirs(folder / c)
        for path in sorted(glob.glob(os.path.join(PHOTOS, c, "*.jpg")))[:per_class]:
            shutil.copy(path, folder / c)
    return str(folder)


def _labels(model, images):
    result = CliRunner().invoke(main, ["predict", str(model), str(images), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    return {p["path"]: p["label"] for p in json.loads(result.stdout)["predictions"]}


def test_export_is_verified_and_writes_model_labels_and_metadata(exported, trained_run):
    import onnxruntime

    info, folder = exported["info"], exported["folder"]
    assert info["top1_agreement"] == 1.0 and info["max_abs_diff"] < 1e-3 and info["images"] >= 6
    assert info["path"] == str(folder / "model.onnx") and os.path.getsize(info["path"]) == info["size"]
    assert sorted(os.listdir(folder)) == ["labels.txt", "metadata.json", "model.onnx"]
    assert (folder / "labels.txt").read_text().split() == sorted(COLOURS)
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["format"] == "onnx" and metadata["labels"] == sorted(COLOURS)
    assert metadata["source"] == os.path.abspath(trained_run["run"]) and metadata["verification"]["images"] == info["images"]
    session = onnxruntime.InferenceSession(info["path"])
    (given,), (answer,) = session.get_inputs(), session.get_outputs()
    assert (given.name, given.shape[1:], answer.name) == ("image", [32, 32, 3], "probabilities")


def test_predict_on_the_onnx_file_and_folder_gives_the_runs_labels(exported, trained_run):
    from_run = _labels(trained_run["run"], trained_run["data"])
    assert len(from_run) == 48
    assert _labels(exported["folder"] / "model.onnx", trained_run["data"]) == from_run
    assert _labels(exported["folder"], trained_run["data"]) == from_run


@needs_photos
def test_onnx_agrees_with_keras_on_real_photos(exported, trained_run, tmp_path):
    from transfer.data.images import load_image
    from transfer.runners import load_model

    photos = _photos(tmp_path / "photos")
    keras_model, onnx_model = load_model(trained_run["run"]), load_model(exported["info"]["path"])
    assert onnx_model.kind == "onnx" and onnx_model.labels == keras_model.labels
    paths = sorted(glob.glob(os.path.join(photos, "*", "*.jpg")))
    images = np.stack([load_image(p, (32, 32)) for p in paths]).astype(np.float32)
    expected, got = keras_model.predict_batch(images), onnx_model.predict_batch(images)
    assert np.max(np.abs(expected - got)) < 1e-3 and (expected.argmax(1) == got.argmax(1)).all()
    assert _labels(exported["info"]["path"], photos) == _labels(trained_run["run"], photos)


@needs_photos
@pytest.mark.slow
def test_a_pretrained_lite0_keras_file_exports_checked_on_real_photos(tmp_path, runner):
    """EfficientNet-Lite0 with its ImageNet weights (what people deploy), as a lone .keras checked on --data."""
    from transfer.backbones import registry
    from transfer.config import TrainConfig
    from transfer.heads import build_model

    spec, config = registry.resolve(TrainConfig(data_dir=".", backbone="efficientnet_lite0", image_size=96,
                                                cache_dir=str(tmp_path / "cache")))
    build_model(spec, config, 2).save(tmp_path / "lite.keras")
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    photos = _photos(tmp_path / "photos", per_class=8)
    result = runner.invoke(main, ["export", str(tmp_path / "lite.keras"), "--format", "onnx", "--data", photos,
                                  "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["images"] == 16 and info["top1_agreement"] == 1.0 and info["max_abs_diff"] < 1e-3
    assert info["path"] == str(tmp_path / "export" / "lite" / "onnx" / "model.onnx")
    assert _labels(info["path"], photos) == _labels(tmp_path / "lite.keras", photos)


def test_an_op_tf2onnx_cannot_convert_is_named_and_nothing_is_written(tmp_path, runner):
    """Lanczos resizing (TensorFlow's ScaleAndTranslate) has no ONNX equivalent in the pinned tf2onnx."""
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Resizing(16, 16, interpolation="lanczos3")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x)).save(tmp_path / "lanczos.keras")
    (tmp_path / "labels.txt").write_text("\n".join(sorted(COLOURS)))
    data = make_dataset(tmp_path / "colours", per_class=2)
    result = runner.invoke(main, ["export", str(tmp_path / "lanczos.keras"), "--format", "onnx", "--data", data,
                                  "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "cannot be converted to ONNX" in result.output and "ScaleAndTranslate" in result.output
    assert "nothing was written" in result.output and "--format saved_model or tflite" in result.output
    assert not glob.glob(str(tmp_path / "out" / "**" / "*.onnx"), recursive=True)
    assert not os.path.exists(tmp_path / "out" / "lanczos" / "onnx")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_predict_on_a_damaged_onnx_is_a_clear_error(exported, trained_run, runner, tmp_path, damage):
    shutil.copytree(exported["folder"], tmp_path / "copy")
    model = tmp_path / "copy" / "model.onnx"
    content = model.read_bytes()
    model.write_bytes(content[:len(content) // 2] if damage == "truncated" else b"not protobuf" * 100)
    result = runner.invoke(main, ["predict", str(model), trained_run["data"]])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "onnxruntime" in result.output and "cannot load the ONNX model" in result.output
    assert "Traceback" not in result.output


def test_a_second_export_is_refused_and_other_formats_share_the_folder(exported, trained_run, runner):
    base = exported["folder"].parent
    again = runner.invoke(main, ["export", trained_run["run"], "--format", "onnx", "-o", str(base.parent)])
    assert again.exit_code == 1 and "already exists; delete it to export again" in again.output
    tflite = runner.invoke(main, ["export", trained_run["run"], "--format", "tflite", "-o", str(base.parent), "--quiet"])
    assert tflite.exit_code == 0, tflite.output  # onnx/ counts as an export of transfer, not a stranger's folder


def test_missing_extra_names_the_pip_line(trained_run, runner, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # what `import tf2onnx` meets when it is not installed
    result = runner.invoke(main, ["export", trained_run["run"], "--format", "onnx", "-o", str(tmp_path)])
    assert result.exit_code == 1 and "pip install 'transfer[onnx]'" in result.output
    assert not os.listdir(tmp_path)


def test_quantize_and_version_are_usage_errors_with_onnx(trained_run, runner):
    for option in (["--quantize", "int8"], ["--version", "2"]):
        result = runner.invoke(main, ["export", trained_run["run"], "--format", "onnx", *option])
        assert result.exit_code == 2 and "applies to" in result.output


def test_serve_answers_from_the_onnx_with_the_runs_labels(exported, trained_run):
    """`transfer serve` takes any artifact: its WSGI app on the .onnx, driven by werkzeug's test client."""
    import base64

    from werkzeug.test import Client

    from transfer.runners import load_model
    from transfer.serve import Model, default_name, make_app

    loaded = load_model(exported["folder"])
    assert default_name(loaded) == "colours"
    paths = sorted(glob.glob(os.path.join(trained_run["data"], "*", "00[0-3].png")))
    rows = [{"b64": base64.b64encode(open(p, "rb").read()).decode()} for p in paths]
    answer = Client(make_app(Model(loaded, "colours", "1"))).post("/v1/models/colours:predict",
                                                                   json={"instances": rows})
    assert answer.status_code == 200
    from_run = _labels(trained_run["run"], trained_run["data"])
    assert [p["classes"][0] for p in answer.json["predictions"]] == [from_run[p] for p in paths]


def test_constants_a_layer_keeps_are_inlined_not_left_as_inputs():
    """Keras' Normalization keeps its mean and variance as tensors (EfficientNetB0 does): tf2onnx made them inputs."""
    import keras

    from transfer.export.onnx import convert
    from transfer.runners import ONNXRunner as Runner

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Normalization(mean=[100.0, 120.0, 140.0], variance=[400.0, 900.0, 1600.0])(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    runner = Runner(convert(model))
    assert [i.name for i in runner.session.get_inputs()] == ["image"]
    images = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(runner(images), model.predict_on_batch(images), atol=1e-5)
