"""Training a classifier: a run is a list of phases that a runner executes against a resumable state.

Where to look:

    trainer.py     train(): scan, build the model, plan the phases, run them, evaluate, save the run folder
    phases.py      one object per phase: what it trains, on which inputs, its optimizer and schedule
    runner.py      executes the phases in order: compile, callbacks, fit; a diverged loss; Ctrl-C
    probe.py       --fine-tune auto: a few epochs of phase 2 against the head decide whether it goes on
    callbacks.py   the Keras callbacks of every phase (validation, time limit, history, checkpoint)
    resume.py      --resume: the state backed up after every epoch, and putting it back
    interrupts.py  Ctrl-C and SIGTERM: stop after the current batch, keep the run resumable
    results.py     the run's results: the best epoch back, the final metrics, history.csv and its plot
    precision.py   the dtype policy (mixed precision)
    distribute.py  --distribute: the strategy, the chief, and what workers share and agree on

File names are known only to :mod:`transfer.runs`. Importing the package does
not import TensorFlow (the preflight checks use :mod:`.distribute`); its names
below are imported when first used.
"""

_LAZY = {"TrainResult": "trainer", "train": "trainer", "dtype_policy": "precision", "make_optimizer": "phases",
         "read_history": "results", "_TimeLimit": "callbacks"}


def __getattr__(name):
    import importlib

    if name not in _LAZY:
        raise AttributeError(f"module 'transfer.training' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name.lstrip("_"))


__all__ = ["TrainResult", "dtype_policy", "make_optimizer", "read_history", "train"]
