"""--fine-tune auto, how deep: where phase 2 paid, a probe of fine-tuning from --deeper-unfreeze decides whether the
run goes deeper; one that does not pay (even across a resume) leaves phase 2's best model, its default time bound
skips it and says so, and a deeper point must be a layer below --unfreeze. (Where it pays:
test_finetune_probe.py's probe that pays.)"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

from conftest import make_dataset
from test_finetune_probe import _predictions, _record, _train
from test_resume import history
from transfer import runs
from transfer.config import TrainConfig
from transfer.errors import ConfigError
from transfer.training import probe


@pytest.mark.slow
def test_fine_tuning_deeper_that_does_not_pay_leaves_phase_2s_best_model(tmp_path, monkeypatch, caplog):
    """Phase 2 pays in both runs; in one the deeper probe does not fit its default budget (skipped, said and
    recorded), in the other it trains, is interrupted after its first epoch and resumed, and does not pay: both
    end on phase 2's best weights."""
    from transfer.errors import Interrupted
    from transfer.training import train

    monkeypatch.setattr(probe, "ROOM", -1.0)
    margins = []  # each run's first probe (phase 2's) pays, its second (the deeper one) does not

    def margin(accuracy, images):
        margins.append(accuracy)
        return -1.0 if len(margins) == 1 else 2.0

    monkeypatch.setattr(probe, "margin", margin)
    data = make_dataset(tmp_path / "colours", per_class=6)
    monkeypatch.setitem(probe.WITHIN, "deeper", 0.0)
    with caplog.at_level(logging.INFO, logger="transfer"):  # phase 2 is its probe's 3 epochs
        skipped = _train(data, tmp_path, "skipped", fine_tune="auto", fine_tune_epochs=probe.PROBE_EPOCHS)
    record = _record(skipped.run_dir, "deeper_probe")
    assert record["decision"] == probe.SKIPPED and "within 0 s; --time-limit sets more" in record["note"]
    assert "skipped phase deeper" in caplog.text and "deeper" not in history(skipped.run_dir)[1]
    monkeypatch.setitem(probe.WITHIN, "deeper", 3600.0)
    margins.clear()
    told = probe.Told.on_epoch_end

    def ctrl_c_after_the_first_deeper_epoch(self, epoch, logs=None):  # after that epoch's backup
        told(self, epoch, logs)
        if self.probe.record.stage == "deeper":
            monkeypatch.setattr(probe.Told, "on_epoch_end", told)
            raise KeyboardInterrupt

    monkeypatch.setattr(probe.Told, "on_epoch_end", ctrl_c_after_the_first_deeper_epoch)
    with pytest.raises(Interrupted):
        _train(data, tmp_path, "probed", fine_tune="auto", fine_tune_epochs=probe.PROBE_EPOCHS)
    with open(tmp_path / "models" / ("probed" + runs.STAGING_SUFFIX) / runs.DEEPER_PROBE_FILE) as f:
        interrupted = json.load(f)
    assert (interrupted["decision"], interrupted["probe_epochs"]) == (probe.PROBING, 1)
    probed = train(TrainConfig(output_dir=str(tmp_path / "models"), name="probed", verbose=0), resume=True)
    record = _record(probed.run_dir, "deeper_probe")
    assert record["decision"] == probe.HEAD_ONLY and record["note"].endswith("fine-tuning's weights are kept")
    assert history(probed.run_dir)[1].count("deeper") == probe.PROBE_EPOCHS  # it trained, then stopped
    np.testing.assert_allclose(_predictions(probed, data), _predictions(skipped, data), atol=1e-6)
    assert not os.path.exists(os.path.join(probed.run_dir, runs.FINE_TUNED_WEIGHTS_FILE))


def test_a_deeper_point_must_start_below_unfreeze_and_an_unfreeze_given_is_the_depth(tmp_path):
    from transfer import backbones

    _, config = backbones.resolve(TrainConfig(data_dir="x", backbone="efficientnet_lite0"))
    assert (config.unfreeze, config.deeper_unfreeze, config.deepens) == ("after:block5c_add", "after:block4c_add", True)
    given = TrainConfig(data_dir="x", backbone="efficientnet_lite0", unfreeze="after:block6a_add")
    _, config = backbones.resolve(given)
    assert (config.deeper_unfreeze, config.deepens) == ("none", False)
    for mode in ("on", "off"):  # only a probe goes deeper: the option would be silently ignored
        with pytest.raises(ConfigError, match=f"--deeper-unfreeze 'after:block4c_add' is probed only under "
                                              f"--fine-tune auto, and this run's is '{mode}'"):
            backbones.resolve(TrainConfig(data_dir="x", backbone="efficientnet_lite0", fine_tune=mode,
                                          deeper_unfreeze="after:block4c_add"))
    _, config = backbones.resolve(TrainConfig(data_dir="x", fine_tune="on", deeper_unfreeze="none"))
    assert config.deepens is False
    data = make_dataset(tmp_path / "colours", per_class=4)
    with pytest.raises(ConfigError, match="--deeper-unfreeze 'after:block6b_add' does not start below --unfreeze"):
        _train(data, tmp_path, "upside-down", fine_tune="auto", deeper_unfreeze="after:block6b_add")
    assert not os.path.exists(tmp_path / "models")  # before anything was written


def test_a_point_that_is_no_layer_names_its_option():
    import keras

    from transfer.heads import unfreeze_index

    base = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="block1_add")])
    assert unfreeze_index(base, "after:block1_add", "--deeper-unfreeze") == 1
    with pytest.raises(ConfigError, match="--deeper-unfreeze 'after:block9_add': the backbone has no layer "
                                          "'block9_add'. Similar names: block1_add"):
        unfreeze_index(base, "after:block9_add", "--deeper-unfreeze")
