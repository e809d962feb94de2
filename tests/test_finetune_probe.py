"""--fine-tune auto: a probe of phase 2 decides whether fine-tuning pays, and a second one whether fine-tuning deeper
pays too; each decision is recorded, a probe that does not pay leaves the model it started from, and a budget too
small for a probe skips it and says so."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

from conftest import make_dataset
from test_resume import history
from transfer import runs
from transfer.config import TrainConfig
from transfer.errors import ConfigError
from transfer.training import probe


def _train(data, tmp_path, name, epochs=8, **settings):
    from transfer.training import train

    settings = {"fine_tune_epochs": 4, **settings}
    config = TrainConfig(data_dir=data, backbone="efficientnet_lite0", weights="none", image_size=32, epochs=epochs,
                         fine_tune_optimizer="sgd", fine_tune_lr=1e-2, patience=50, output_dir=str(tmp_path / "models"),
                         name=name, cache_dir=str(tmp_path / "cache"), verbose=0, **settings)
    return train(config)


def _record(run_dir, key="fine_tune_probe"):
    with open(os.path.join(run_dir, runs.CONFIG_FILE)) as f:
        return json.load(f)[key]


def _predictions(result, data):
    import keras

    images = np.stack([keras.utils.img_to_array(keras.utils.load_img(os.path.join(data, "red", f"{i:03d}.png")))
                       for i in range(4)])
    return result.model.predict(images, verbose=0)


@pytest.mark.slow  # two runs of Lite0 at 32 px (20-40 s on 2 busy cores)
def test_a_probe_that_does_not_pay_leaves_the_head_only_model(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(probe, "ROOM", -1.0)  # probe even a perfect head
    data = make_dataset(tmp_path / "colours", per_class=10)
    head_only = _train(data, tmp_path, "off", fine_tune="off")
    with caplog.at_level(logging.INFO, logger="transfer"):
        probed = _train(data, tmp_path, "auto", fine_tune="auto")
    record = _record(probed.run_dir)
    assert record["decision"] == probe.HEAD_ONLY and record["probe_epochs"] == probe.PROBE_EPOCHS
    assert f"--fine-tune auto: fine-tuning {record['note']}; phase 2 stops here" in caplog.text
    assert history(probed.run_dir)[1].count("fine_tune") == probe.PROBE_EPOCHS  # it trained, then stopped
    np.testing.assert_allclose(_predictions(probed, data), _predictions(head_only, data), atol=1e-6)
    assert not os.path.exists(os.path.join(probed.run_dir, runs.HEAD_WEIGHTS_FILE))
    with open(os.path.join(probed.run_dir, runs.FINE_TUNE_PROBE_FILE)) as f:
        assert json.load(f) == record
    with open(os.path.join(probed.run_dir, runs.REPORT_FILE), encoding="utf-8") as f:
        assert "Fine-tuning (--fine-tune auto: head only)" in f.read()


@pytest.mark.slow
def test_a_probe_that_pays_fine_tunes_on(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(probe, "margin", lambda accuracy, images: -1.0)  # any result pays
    monkeypatch.setattr(probe, "ROOM", -1.0)
    data = make_dataset(tmp_path / "colours", per_class=10)
    with caplog.at_level(logging.INFO, logger="transfer"):  # the best epoch by accuracy: both phases run fit on a
        result = _train(data, tmp_path, "auto", fine_tune="auto", monitor="val_accuracy")  # boundary cache
    record = _record(result.run_dir)
    assert record["decision"] == probe.FINE_TUNE and record["note"].startswith("pays")
    # said when it is decided (after the probe's 3 epochs of 4: one to go), not only in the table at the end
    said = caplog.text.index(f"--fine-tune auto: fine-tuning {record['note']}; up to 1 more epoch(s) of about ")
    assert said < caplog.text.index("model       unfreeze")
    assert history(result.run_dir)[1].count("fine_tune") == 4  # past the probe, to --fine-tune-epochs
    # it paid, so fine-tuning deeper was probed from phase 2's best, paid too, and went on to its own maximum
    deeper = _record(result.run_dir, "deeper_probe")
    assert (deeper["decision"], deeper["unfreeze"], deeper["baseline"]) == (
        probe.FINE_TUNE, "after:block4c_add", "after:block5c_add")
    assert f"--fine-tune auto: deeper fine-tuning {deeper['note']}; up to 1 more epoch(s)" in caplog.text
    assert history(result.run_dir)[1].count("deeper") == 4 and result.metrics["epochs"]["deeper"] == 4
    with open(os.path.join(result.run_dir, runs.REPORT_FILE), encoding="utf-8") as f:
        assert "Deeper fine-tuning (--fine-tune auto: deeper)" in f.read()


def test_a_tiny_budget_skips_the_probe_and_says_so(tmp_path, caplog, monkeypatch):
    data = make_dataset(tmp_path / "colours", per_class=10)
    with caplog.at_level(logging.INFO, logger="transfer"):
        result = _train(data, tmp_path, "tiny", fine_tune="auto", time_limit="1s")
    record = _record(result.run_dir)
    assert record["decision"] == probe.SKIPPED and "--time-limit" in record["note"]
    assert "skipped phase fine_tune" in caplog.text and "--fine-tune auto: skipped" in caplog.text
    assert "fine_tune" not in history(result.run_dir)[1]
    # without --time-limit, what auto decides on is bounded all the same (probe.WITHIN: 9 minutes)
    monkeypatch.setitem(probe.WITHIN, "fine_tune", 0.0)
    result = _train(data, tmp_path, "bounded", fine_tune="auto")
    record = _record(result.run_dir)
    assert record["decision"] == probe.SKIPPED and "within 0 s; --time-limit sets more" in record["note"]
    assert "fine_tune" not in history(result.run_dir)[1]


def test_a_head_without_errors_to_fix_is_not_probed(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(probe, "ROOM", 1.0)  # whatever the head scores, it leaves too few errors
    data = make_dataset(tmp_path / "colours", per_class=10)
    with caplog.at_level(logging.INFO, logger="transfer"):
        result = _train(data, tmp_path, "perfect", fine_tune="auto")
    record = _record(result.run_dir)
    assert record["decision"] == probe.SKIPPED and record["head_accuracy"] is not None
    assert "of errors to fix" in record["note"] and record["note"] in caplog.text
    assert "fine_tune" not in history(result.run_dir)[1]
    assert result.metrics["seconds"]["features"][1] == 0  # the boundary pass never ran


def test_the_margin_is_one_standard_error_and_at_least_one_image():
    assert probe.margin(0.9, 400) == pytest.approx(0.015)
    assert probe.margin(1.0, 50) == pytest.approx(0.02)


def test_on_a_cluster_fine_tuning_goes_on_only_if_no_worker_finds_that_it_does_not_pay(monkeypatch):
    """Each worker measures the same, but they must not part ways: one worker's "does not pay" stops them all
    (``anyone`` is the all-reduce of the runner; the 2-worker run: test_distribute.py)."""
    monkeypatch.setattr(probe, "save", lambda run, record: None)
    said = []

    def another_worker_disagrees(mine):
        said.append(mine)
        return True

    for anyone, expected in [(lambda mine: mine, probe.FINE_TUNE), (another_worker_disagrees, probe.HEAD_ONLY)]:
        record = probe.Record("all", head_accuracy=0.5, margin=0.05, probe_accuracy=0.9, probe_epochs=3)
        probe.Probe(None, record, 0, anyone).decide()
        assert record.decision == expected
    assert said == [False]  # this worker found that it pays


def test_a_bad_fine_tune_value_is_one_clear_error(runner, colours_dir):
    from cli import main

    result = runner.invoke(main, ["train", colours_dir, "--fine-tune", "sometimes"])
    assert result.exit_code == 2 and "Error: Invalid value for '--fine-tune'" in result.output
    with pytest.raises(ConfigError, match="--fine-tune"):
        TrainConfig(data_dir=colours_dir, fine_tune="sometimes").validate()
    # a backbone without fine-tuning epochs by default: asking for fine-tuning must not silently train none
    result = runner.invoke(main, ["train", colours_dir, "--backbone", "smallcnn", "--fine-tune", "auto"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Error: --fine-tune auto: smallcnn has no fine-tuning epochs by default; add --fine-tune-epochs N" \
        in result.output
