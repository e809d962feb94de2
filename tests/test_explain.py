"""explain (Grad-CAM) and visualize: heat maps that point at the evidence, for every kind of model, failing cleanly."""

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import main

SIZE = 64


def write_located(root, per_class, seed):
    """``root/{left,right}/i.png``: a white square on noise, its class decided by the half it sits in."""
    rng = np.random.default_rng(seed)
    side = SIZE // 4
    for c, name in enumerate(("left", "right")):
        os.makedirs(root / name, exist_ok=True)
        for i in range(per_class):
            pixels = rng.normal(90, 30, (SIZE, SIZE, 3))
            y = rng.integers(0, SIZE - side)
            x = rng.integers(0, SIZE // 2 - side) + c * SIZE // 2
            pixels[y:y + side, x:x + side] = 255
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def located(tmp_path_factory):
    """A smallcnn trained (no flips: they would mix left and right) on where the square is; held-out images."""
    root = tmp_path_factory.mktemp("located")
    data = write_located(root / "train", 40, seed=0)
    held_out = write_located(root / "held_out", 10, seed=1)
    result = CliRunner().invoke(main, [
        "train", str(data), "--backbone", "smallcnn", "--image-size", str(SIZE), "--augment", "none", "--epochs", "8",
        "--batch-size", "16", "-o", str(root / "models"), "--name", "located", "--quiet"])
    assert result.exit_code == 0, result.output
    images = sorted(str(p) for p in held_out.glob("*/*.png"))
    return {"run": str(root / "models" / "located"), "images": images, "root": root}


def not_blank(path):
    return os.path.isfile(path) and np.asarray(Image.open(path).convert("RGB"), np.float64).var() > 0


def test_heat_map_peaks_in_the_half_that_decides_the_class(located, tmp_path):
    from transfer.reports.explain import explain

    result = explain(located["run"], located["images"], output=str(tmp_path / "out"))
    assert not result.failures and len(result.explanations) == 20
    right = [np.unravel_index(e.heatmap.argmax(), e.heatmap.shape)[1] >= SIZE / 2 for e in result.explanations]
    truth = [os.sep + "right" + os.sep in e.path for e in result.explanations]
    assert np.mean(np.equal(right, truth)) >= 0.8
    assert result.layer.startswith("backbone/")  # the last feature map, found inside the nested backbone


def test_explain_cli_writes_a_png_per_image_and_a_contact_sheet(located, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "explain-located"  # the default: ./explain-<run name>
    args = ["explain", located["run"], *located["images"][:3], "--json", "-q"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [row["path"] for row in report["images"]] == located["images"][:3]
    assert all(row["label"] in ("left", "right") and 0 <= row["probability"] <= 1 for row in report["images"])
    assert all(not_blank(row["png"]) for row in report["images"]) and not_blank(report["contact_sheet"])
    # a second run into transfer's own folder adds files beside the first, replacing none
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["contact_sheet"] == os.path.join("explain-located", "contact_sheet-2.png")
    assert len(list(out.glob("*.png"))) == 8


def test_explain_refuses_a_folder_of_the_users(located, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = CliRunner().invoke(main, ["explain", located["run"], located["images"][0], "-o", str(out), "-q"])
    assert result.exit_code == 1 and "already holds files that transfer did not write" in result.output
    assert os.listdir(out) == ["notes.txt"]
    result = CliRunner().invoke(main, ["visualize", located["run"], "-o", str(out / "notes.txt")])
    assert result.exit_code == 1 and "is a file, not a folder" in result.output
    assert (out / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("option, value, message", [
    ("--layer", "no_such_layer", "Valid layers: augment, preprocess_scale, block1_conv"),
    ("--class", "middle", "valid classes: left, right"),
])
def test_bad_layer_or_class_is_one_error_line(located, tmp_path, option, value, message):
    result = CliRunner().invoke(main, ["explain", located["run"], located["images"][0], option, value,
                                       "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and message in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output  # after the device line, one Error line
    assert not (tmp_path / "out").exists()


def test_explain_for_a_chosen_class_and_layer(located, tmp_path):
    from transfer.reports.explain import explain

    result = explain(located["run"], located["images"][:2], target="right", layer="block2_conv",
                     output=str(tmp_path / "out"))
    assert result.layer == "backbone/block2_conv" and {e.target for e in result.explanations} == {"right"}


def test_unreadable_image_is_reported_and_the_others_explained(located, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    result = CliRunner().invoke(main, ["explain", located["run"], str(broken), located["images"][0],
                                       "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and "broken.png" in result.output and "Traceback" not in result.output
    assert len(list((tmp_path / "out").glob("*-gradcam.png"))) == 1


def built_model(folder, backbone, tta, size):
    """An untrained classifier of the registry entry (random weights, seeded), saved as a .keras file with labels."""
    import keras

    from transfer.backbones import resolve
    from transfer.config import TrainConfig
    from transfer.heads import build_model

    spec, config = resolve(TrainConfig(data_dir=".", backbone=backbone, weights=None if os.path.isdir(backbone)
                                       else "none", image_size=None if os.path.isdir(backbone) else size, tta=tta))
    os.makedirs(folder, exist_ok=True)
    keras.utils.set_random_seed(0)
    path = os.path.join(folder, f"{os.path.basename(backbone)}-{tta}.keras")
    build_model(spec, config, 2).save(path)
    with open(os.path.join(folder, "labels.txt"), "w") as f:
        f.write("left\nright\n")
    return path


@pytest.mark.parametrize("backbone, size", [("lenet5", 32), ("smallcnn", 32), ("efficientnet_lite0", 64),
                                            ("mobilenetv2", 64), ("located-run", None)])
@pytest.mark.parametrize("tta", [False, True])
def test_every_kind_of_backbone_with_and_without_mirroring(located, tmp_path, backbone, size, tta):
    """The last feature map is found inside each nested backbone (untrained models: the search is what is tested);
    with --tta the mirrored view is flipped back, so the heat map of a mirrored image is the mirrored heat map."""
    from transfer.reports.explain import explain, orientations
    from transfer.runners import load_model

    source = located["run"] if backbone == "located-run" else backbone  # --backbone PATH: a trained model's base
    path = built_model(tmp_path / "models", source, tta, size)
    loaded = load_model(path)
    image = np.random.default_rng(0).integers(0, 256, (*loaded.image_size, 3), dtype=np.uint8)
    mirrored = image[:, ::-1].copy()
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(mirrored).save(tmp_path / "b.png")
    maps = []
    for target in ("left", "right"):  # random weights: one class's map may be all negative evidence (all 0)
        result = explain(loaded, [str(tmp_path / "a.png"), str(tmp_path / "b.png")], target=target,
                         output=str(tmp_path / "out"))
        assert result.layer.startswith("backbone/") and all(not_blank(e.png) for e in result.explanations)
        maps.append([e.heatmap for e in result.explanations])
    assert orientations(loaded.keras_model, result.layer) == [[False, True] if tta else [False]]
    assert max(a.max() for a, _ in maps) > 0
    if tta:
        assert all(np.abs(a - b[:, ::-1]).max() < 0.05 for a, b in maps)


def test_visualize_filters_and_activation_maps(located, tmp_path):
    out = tmp_path / "seen"
    result = CliRunner().invoke(main, ["visualize", located["run"], "--image", located["images"][0],
                                       "-o", str(out), "--json", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["filters_layer"] == "block1_conv" and not_blank(report["filters"])
    assert list(report["activations"]) == ["backbone/block1_conv", "backbone/block2_conv", "backbone/block3_conv"]
    assert all(not_blank(path) for path in report["activations"].values())
    chosen = CliRunner().invoke(main, ["visualize", located["run"], "--image", located["images"][0],
                                       "--layer", "block2_pool", "-o", str(out), "--json", "-q"])
    assert list(json.loads(chosen.output)["activations"]) == ["backbone/block2_pool"]


def test_visualize_bad_layer_lists_the_valid_ones(located, tmp_path):
    result = CliRunner().invoke(main, ["visualize", located["run"], "--image", located["images"][0],
                                       "--layer", "block9_conv", "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "--layer 'block9_conv'" in result.output and "block3_conv" in result.output


def test_mirroring_built_from_plain_layers_is_found_too(tmp_path):
    """Test-time mirroring as two branches (one flipped by Permute + an anti-diagonal Dense) through a shared
    backbone, averaged: how a model without custom layers does it. Its mirrored branch is found and flipped back."""
    import keras

    from transfer.reports.explain import explain, orientations
    from transfer.runners import load_model

    keras.utils.set_random_seed(0)
    size = 16
    image = keras.Input((size, size, 3), name="image")
    flip = keras.layers.Dense(size, use_bias=False, trainable=False, name="flip")
    mirrored = keras.layers.Permute((1, 3, 2))(flip(keras.layers.Permute((1, 3, 2))(image)))
    inner = keras.Input((size, size, 3))
    features = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(keras.layers.Rescaling(1 / 255)(inner))
    backbone = keras.Model(inner, features, name="backbone")
    head = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax")], name="head")
    model = keras.Model(image, keras.layers.Average()([head(backbone(image)), head(backbone(mirrored))]))
    flip.set_weights([np.eye(size)[::-1]])
    model.save(tmp_path / "two_branches.keras")
    (tmp_path / "labels.txt").write_text("left\nright\n")
    loaded = load_model(str(tmp_path / "two_branches.keras"))
    assert sorted(orientations(loaded.keras_model, "backbone/conv")) == [[False], [True]]
    pixels = np.random.default_rng(1).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels[:, ::-1].copy()).save(tmp_path / "b.png")
    for target in ("left", "right"):
        a, b = (e.heatmap for e in explain(loaded, [str(tmp_path / "a.png"), str(tmp_path / "b.png")],
                                           target=target, output=str(tmp_path / "out")).explanations)
        assert np.abs(a - b[:, ::-1]).max() < 0.05
    from transfer.reports.visualize import _activations  # visualize shows the image's own view, not the mirrored one

    seen = _activations(loaded, ["conv"], str(tmp_path / "a.png"), max_pixels=10**8)["backbone/conv"]
    own = np.asarray(loaded.keras_model.get_layer("backbone")(pixels[None].astype(np.float32)))[0]
    assert np.allclose(seen, own, atol=1e-5) and not np.allclose(seen, own[:, ::-1], atol=1e-5)
