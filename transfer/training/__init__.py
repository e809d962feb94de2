"""Training a classifier: a run is a list of phases that a runner executes against a resumable state.

Where to look:

    trainer.py     train(): scan, build the model, plan the phases, run them, evaluate, save the run folder
    phases.py      one object per phase: what it trains, on which inputs, its optimizer and schedule
    runner.py      executes the phases in order: compile, callbacks, fit; a diverged loss; Ctrl-C
    callbacks.py   the Keras callbacks of every phase (validation, time limit, history, checkpoint)
    resume.py      --resume: the state backed up after every epoch, and putting it back
    interrupts.py  Ctrl-C and SIGTERM: stop after the current batch, keep the run resumable
    evaluation.py  the end-of-training evaluation, history.csv and its plot
    precision.py   the dtype policy (mixed precision)

File names are known only to :mod:`transfer.runs`.
"""

from .callbacks import TimeLimit as _TimeLimit  # noqa: F401  (the names tests import from here)
from .evaluation import read_history
from .phases import make_optimizer
from .precision import dtype_policy
from .trainer import TrainResult, train

__all__ = ["TrainResult", "dtype_policy", "make_optimizer", "read_history", "train"]
