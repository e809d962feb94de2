"""Ctrl-C (SIGINT) and SIGTERM (a preempted machine): stop after the current batch, keep the run resumable.

While a phase trains, the signal only sets a flag; :class:`.callbacks.StopAfterBatch`
raises ``KeyboardInterrupt`` at the end of the batch (or of the epoch's
backup), so the last finished epoch stays backed up. On a cluster
:func:`.distribute.agreement` does it instead, once the workers agree. Outside training, or at
a second signal, it is raised at once, as Python does by default. (No Keras here: the CLI's wait for a
cluster's workers is stopped by these handlers before TensorFlow is imported.)
"""

from __future__ import annotations

import contextlib
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """The signal handler: ``signum`` is the signal that asked to stop (None: none did)."""

    def __init__(self):
        self.signum: int | None = None
        self.fitting = False  # while True, a first signal waits for the end of the batch

    def __call__(self, signum, frame):
        repeated = self.signum is not None
        self.signum = signum
        if repeated or not self.fitting:
            raise KeyboardInterrupt

    @property
    def status(self) -> int:
        """The exit status a shell gives a process this signal ended: 130 for Ctrl-C, 143 for SIGTERM."""
        return 128 + (self.signum or signal.SIGINT)


@contextlib.contextmanager
def handled():
    """Install :class:`StopRequest` for SIGINT and SIGTERM (only the main thread may), restoring the old handlers."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {signum: signal.signal(signum, stop) for signum in SIGNALS}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
