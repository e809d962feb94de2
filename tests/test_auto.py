"""--backbone auto: candidates from the registry, measured on the data, the choice recorded and used.

The registry is swapped, for these tests only, for small stand-ins: a
"pretrained" backbone whose (fixed, seeded) features tell colours apart, one
whose features are the same for every image, one that is costly, and a Keras
download that is not cached. The product never fakes pretrained weights; the
real entries are compared in benchmarks/bench_auto.py.
"""

from __future__ import annotations

import glob
import json
import logging
import os

import pytest

from conftest import make_dataset
from transfer import runs
from transfer.backbones import registry
from transfer.backbones.registry import BackboneSpec, HeadDefaults
from transfer.config import TrainConfig


def _stand_in(name: str, size: int, preprocessing: str, kind: str = "colours", channels: int = 8) -> BackboneSpec:
    def build(input_shape, weights=None, **_):
        import keras

        inputs = keras.Input(input_shape)
        if kind == "flat":  # every image gives the same features: nothing to learn from
            x = keras.layers.Conv2D(channels, 3, padding="same", kernel_initializer="zeros", bias_initializer="ones",
                                    name=f"{name}_conv")(inputs)
        else:
            x = keras.layers.Conv2D(channels, 3, padding="same", activation="relu", name=f"{name}_conv",
                                    kernel_initializer=keras.initializers.GlorotUniform(seed=1))(inputs)
        if kind == "costly":
            x = keras.layers.Conv2D(channels, 3, padding="same", name=f"{name}_conv2")(x)
        return keras.Model(inputs, x, name=name)

    return BackboneSpec(name=name, build=build, preprocessing=preprocessing, default_size=size, min_size=8,
                        unfreeze="all", params=0, kind="pretrained", head=HeadDefaults(), fine_tune_epochs=0,
                        description="a test stand-in")


@pytest.fixture
def stand_ins(monkeypatch):
    """The registry of these tests: three stand-ins, a scratch net and an uncached Keras download, in this order."""
    entries = [_stand_in("flat", 16, "unit", "flat"), _stand_in("colours", 16, "tf"),
               _stand_in("costly", 384, "unit", "costly", channels=32), registry.get("smallcnn"),
               registry.get("resnet50")]
    monkeypatch.setattr(registry, "_REGISTRY", {spec.name: spec for spec in entries})


def _channel(name: str, channel: int) -> BackboneSpec:
    """A stand-in whose features are one colour channel of the image: blind to the other two."""
    def build(input_shape, weights=None, **_):
        import keras
        import numpy as np

        inputs = keras.Input(input_shape)
        conv = keras.layers.Conv2D(4, 1, use_bias=False, name=f"{name}_conv")
        model = keras.Model(inputs, conv(inputs), name=name)
        kernel = np.zeros((1, 1, input_shape[-1], 4), np.float32)
        kernel[0, 0, channel, :] = 1.0
        conv.set_weights([kernel])
        return model

    return BackboneSpec(name=name, build=build, preprocessing="unit", default_size=16, min_size=8, unfreeze="all",
                        params=12, kind="pretrained", head=HeadDefaults(), fine_tune_epochs=0,
                        description="a test stand-in")


#: each class differs from another in one channel only: red alone cannot tell yellow from magenta, green alone
#: cannot tell yellow from cyan; both together tell all three apart
MIXED = {"cyan": (40, 210, 210), "magenta": (210, 40, 210), "yellow": (210, 210, 40)}


@pytest.fixture
def channels(monkeypatch):
    """A registry of two stand-ins that each see one colour channel."""
    entries = [_channel("reds", 0), _channel("greens", 1)]
    monkeypatch.setattr(registry, "_REGISTRY", {spec.name: spec for spec in entries})


@pytest.fixture
def messages():
    """The lines the library logs (to stderr through the CLI)."""
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("transfer")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def _train(tmp_path, name, data=None, **options):
    from transfer.training import train

    data = data or tmp_path / "colours"
    if not os.path.exists(data):
        make_dataset(data, per_class=12)
    config = TrainConfig(data_dir=str(data), backbone="auto", output_dir=str(tmp_path / "models"), name=name,
                         cache_dir=str(tmp_path / "cache"), feature_engine="keras", fine_tune_epochs=0, lr=0.03, verbose=0,
                         **options)
    return train(config)


def _record(run_dir):
    with open(os.path.join(run_dir, runs.CONFIG_FILE), encoding="utf-8") as f:
        return json.load(f)


def test_auto_measures_the_registry_candidates_keeps_the_best_and_records_why(tmp_path, stand_ins, messages):
    result = _train(tmp_path, "auto", candidates=("flat", "colours", "resnet50"))
    record = _record(result.run_dir)
    choice = record["backbone_choice"]
    rows = {row["backbone"]: row for row in choice["candidates"]}
    assert record["config"]["backbone"] == "colours" == choice["chosen"] and choice["requested"] == "auto"
    assert record["config"]["image_size"] == 16 and record["model"]["preprocessing"] == "tf"  # the winner's
    assert rows["colours"]["chosen"] and rows["colours"]["accuracy"] >= 0.9
    assert not rows["flat"]["chosen"] and rows["flat"]["accuracy"] < 0.6
    assert rows["resnet50"]["accuracy"] is None and "Keras' download" in rows["resnet50"]["note"]
    assert rows["flat+colours"]["note"].startswith("left out: their preprocessing differs (unit, tf)")  # no partner
    assert "5-fold cross-validation" in choice["method"]
    with open(os.path.join(result.run_dir, runs.BACKBONE_CHOICE_FILE), encoding="utf-8") as f:
        assert json.load(f) == choice
    with open(os.path.join(result.run_dir, runs.REPORT_FILE), encoding="utf-8") as f:
        page = f.read()
    assert "Backbone choice" in page and "resnet50" in page
    header = next(line for line in messages if "chosen" in line and "backbone" in line)
    assert header.split() == ["backbone", "size", "features", "s", "accuracy", "loss", "chosen", "note"]
    assert "--backbone auto chose colours" in messages
    # the phase-1 cache is the one auto filled: nothing is computed twice
    assert any(line.endswith("from the cache, 0 computed") for line in messages if line.startswith("feature cache"))


def test_without_candidates_every_pretrained_entry_is_compared_and_predict_and_export_use_the_winner(tmp_path, stand_ins):
    from transfer import predict

    result = _train(tmp_path, "all")
    rows = {row["backbone"]: row for row in _record(result.run_dir)["backbone_choice"]["candidates"]}
    # smallcnn is trained from scratch: not a candidate; the best (costly) pairs with the best candidate that shares
    # its preprocessing (flat), not with the runner-up (colours), whose preprocessing differs
    assert set(rows) == {"flat", "colours", "costly", "resnet50", "flat+costly"}
    assert rows["flat+costly"]["accuracy"] is not None
    assert rows["costly"]["accuracy"] is not None  # no --time-limit: nothing is left out for its cost
    images = sorted(glob.glob(str(tmp_path / "colours" / "*" / "000.png")))
    labels = [p.label for p in predict(result.run_dir, images).predictions]
    assert labels == [os.path.basename(os.path.dirname(i)) for i in images]
    from transfer.export import export

    exported = export(result.run_dir)  # the SavedModel of the chosen backbone, checked against the run's model
    assert exported.top1_agreement == 1.0 and exported.bytes_top1_agreement == 1.0


def test_the_two_best_concatenated_are_measured_and_kept_where_they_beat_each_alone(tmp_path, channels, messages):
    from transfer import predict
    from transfer.export import export

    data = make_dataset(tmp_path / "mixed", per_class=12, colours=MIXED)
    result = _train(tmp_path, "pair", data=data)
    record = _record(result.run_dir)
    rows = {row["backbone"]: row for row in record["backbone_choice"]["candidates"]}
    assert rows["reds"]["accuracy"] < 0.8 and rows["greens"]["accuracy"] < 0.8
    assert rows["reds+greens"]["accuracy"] == 1.0 and rows["reds+greens"]["chosen"]
    assert record["config"]["backbone"] == "reds+greens" == record["backbone_choice"]["chosen"]
    assert "--backbone auto chose reds+greens" in messages
    assert any(line.endswith("from the cache, 0 computed") for line in messages if line.startswith("feature cache"))
    images = sorted(glob.glob(os.path.join(data, "*", "000.png")))
    assert [p.label for p in predict(result.run_dir, images).predictions] == ["cyan", "magenta", "yellow"]
    exported = export(result.run_dir)  # the pair inside a SavedModel, checked against the run's model
    assert exported.top1_agreement == 1.0 and exported.bytes_top1_agreement == 1.0


def test_a_pair_is_kept_only_where_it_beats_the_best_single_candidate_by_more_than_one_standard_error():
    from transfer.selection import Trial
    from transfer.training.auto import _winner

    head_only = TrainConfig(data_dir="unused", fine_tune_epochs=0)
    rows = [Trial("efficientnet_lite0", accuracy=0.90, loss=0.3), Trial("efficientnet_lite1", accuracy=0.89, loss=0.3),
            Trial("efficientnet_lite0+efficientnet_lite1", accuracy=0.91, loss=0.2)]
    assert _winner(rows, 400, head_only).backbone == "efficientnet_lite0"  # +0.01 on 400: one standard error is 0.015
    assert rows[2].note == "not kept: +0.0100 over efficientnet_lite0 is within one standard error (0.0150)"
    rows[2].accuracy = 0.92
    assert _winner(rows, 400, head_only).backbone == "efficientnet_lite0+efficientnet_lite1"


@pytest.mark.parametrize("fine_tune, single, kept", [
    ("auto", 0.90, False),  # Lite0's default: its head leaves room, so the probe decides and may fine-tune it
    ("on", 0.90, False),
    ("off", 0.90, True),
    ("auto", 0.985, True),  # under ROOM errors the probe is skipped: head against head
])
def test_a_pair_is_not_kept_over_a_single_backbone_that_will_be_fine_tuned(fine_tune, single, kept):
    """End to end on blood cells Lite0 fine-tuned (0.935) beat the pair's head (0.915): heads alone mislead."""
    from transfer.selection import Trial
    from transfer.training.auto import _winner

    config = TrainConfig(data_dir="unused", fine_tune=fine_tune)
    rows = [Trial("efficientnet_lite0", accuracy=single, loss=0.3),
            Trial("efficientnet_lite0+efficientnet_lite1", accuracy=1.0, loss=0.1)]
    chosen = _winner(rows, 1000, config).backbone
    assert chosen == ("efficientnet_lite0+efficientnet_lite1" if kept else "efficientnet_lite0")
    assert kept or rows[1].note.startswith("not kept: efficientnet_lite0 leaves room and will be ")


@pytest.mark.parametrize("accuracies", [
    (0.99, 0.988, 0.985),  # the runner-up (InceptionV3) cannot pair with the best: the next that can is taken
    (0.99, 0.980, 0.985),  # the two best pair
])
def test_the_pair_is_the_best_candidate_and_its_best_partner_that_shares_its_preprocessing(accuracies):
    """On 250 monkey photos the two best were Lite1 and InceptionV3, which cannot share one input."""
    from transfer.selection import Trial
    from transfer.training.auto import _pair_members

    names = ("efficientnet_lite1", "inceptionv3", "efficientnet_lite2")
    rows = [Trial(name, accuracy=accuracy, loss=0.1) for name, accuracy in zip(names, accuracies)]
    assert _pair_members(rows) == ["efficientnet_lite1", "efficientnet_lite2"]


def test_where_no_candidate_shares_the_best_ones_preprocessing_the_runner_up_is_named():
    from transfer.selection import Trial
    from transfer.training.auto import _pair_members

    rows = [Trial("inceptionv3", accuracy=0.99, loss=0.1), Trial("efficientnet_lite0", accuracy=0.98, loss=0.1),
            Trial("vgg16", accuracy=0.97, loss=0.1)]
    assert _pair_members(rows) == ["efficientnet_lite0", "inceptionv3"]  # registry order; the table says why not


def test_the_same_seed_gives_the_same_choice_and_the_same_measurements(tmp_path, stand_ins):
    first, second = (_record(_train(tmp_path, name, candidates=("flat", "colours"), seed=7).run_dir)
                     for name in ("one", "two"))
    measured = [[(row["backbone"], row["accuracy"], row["loss"], row["chosen"]) for row in record["backbone_choice"][
        "candidates"]] for record in (first, second)]  # seconds differ, and the second reads the first's cache
    assert measured[0] == measured[1] and first["config"]["backbone"] == second["config"]["backbone"] == "colours"


def test_a_tiny_budget_leaves_the_costly_candidate_out_and_says_why(tmp_path, stand_ins):
    result = _train(tmp_path, "budget", candidates=("costly", "colours"), time_limit="1s")
    rows = {row["backbone"]: row for row in _record(result.run_dir)["backbone_choice"]["candidates"]}
    assert rows["colours"]["chosen"] and rows["colours"]["accuracy"] is not None
    assert rows["costly"]["accuracy"] is None and rows["costly"]["estimate_seconds"] > rows["colours"][
        "estimate_seconds"]
    assert rows["costly"]["note"].startswith("left out: its features would take about")


@pytest.mark.parametrize("options, message", [
    (["--candidates", "efficientnet_lite0"], "--candidates chooses among backbones for --backbone auto only"),
    (["--backbone", "auto", "--weights", "none"], "--backbone auto compares backbones with their own ImageNet"),
    (["--backbone", "auto", "--candidates", "smallcnn"], "--candidates 'smallcnn': only pretrained backbones"),
    (["--backbone", "auto", "--candidates", "nope"], "unknown backbone 'nope'"),
])
def test_what_auto_cannot_compare_is_one_clear_error(runner, colours_dir, tmp_path, options, message):
    from cli import main

    result = runner.invoke(main, ["train", colours_dir, "-o", str(tmp_path / "m"), *options])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and message in result.output, result.output
    assert "Traceback" not in result.output
