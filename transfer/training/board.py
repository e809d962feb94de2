"""``train --tensorboard DIR``: what TensorBoard shows of a run, in its event files.

Written with TensorFlow's own ``tf.summary.write`` and the metadata that
TensorBoard's scalar and image plugins read, as their own summary ops write
it: ``tf.summary.scalar`` and ``tf.summary.image`` live in the ``tensorboard``
package, which TensorFlow 2.21 no longer brings (only viewing needs it).

Each phase is one TensorBoard run (``DIR/head``, ``DIR/fine_tune``), so the
same charts (loss, accuracy, val_loss, val_accuracy, learning_rate) draw both
phases in two colours on one axis: the epoch over the whole run, counted from 0
as history.csv counts it. ``DIR/evaluation`` holds the final validation
confusion matrix as an image. An epoch is written only once the runner has
backed it up, so a resumed run continues each curve where its backup ends
and writes no step twice.
"""

from __future__ import annotations

import io
import math
import numbers
import os

#: (plugin, data class) of TensorBoard's scalars and images (tensorboard/plugins/*/metadata.py)
SCALAR, IMAGE = ("scalars", "DATA_CLASS_SCALAR"), ("images", "DATA_CLASS_BLOB_SEQUENCE")
#: the TensorBoard run of the final evaluation, beside the phases' (named as history.csv's phase column names them)
EVALUATION = "evaluation"


class Board:
    """The summary writers of one run, one per TensorBoard run, made on first use; ``folder`` None writes nothing."""

    def __init__(self, folder: str | None):
        self.folder, self.writers = folder, {}

    def epoch(self, phase: str, epoch: int, logs: dict, learning_rate: float) -> None:
        """One epoch's metrics (the validation ones only when it was validated) and learning rate at step ``epoch``."""
        if self.folder is None:
            return
        import tensorflow as tf

        values = {name: float(value) for name, value in logs.items()
                  if isinstance(value, numbers.Real) and math.isfinite(value)}
        values["learning_rate"] = learning_rate  # after the epoch, as history.csv records it
        with self._writer(phase).as_default(step=epoch):
            for name, value in sorted(values.items()):
                tf.summary.write(name, tf.constant(value, tf.float32), metadata=_metadata(*SCALAR))
        self.writers[phase].flush()  # on disk before the next epoch: a killed run keeps what it backed up

    def confusion(self, matrix, labels: list[str], step: int) -> None:
        """The validation confusion matrix, drawn as confusion_matrix.png is, as the image ``confusion_matrix``."""
        if self.folder is None:
            return
        import tensorflow as tf
        from PIL import Image

        from ..reports.plots import plot_confusion

        png = io.BytesIO()
        plot_confusion(matrix, labels, png)
        width, height = Image.open(io.BytesIO(png.getvalue())).size
        image = tf.constant([str(width).encode(), str(height).encode(), png.getvalue()])  # as the plugin reads it
        with self._writer(EVALUATION).as_default(step=step):
            tf.summary.write("confusion_matrix", image, metadata=_metadata(*IMAGE))
        self.writers[EVALUATION].flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()

    def _writer(self, run: str):
        import tensorflow as tf

        if run not in self.writers:
            self.writers[run] = tf.summary.create_file_writer(os.path.join(self.folder, run))
        return self.writers[run]


def _metadata(plugin: str, data_class: str):
    """What tells TensorBoard which plugin draws a summary (version 0 of its data: empty content)."""
    from tensorflow.core.framework import summary_pb2

    return summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin),
                                       data_class=summary_pb2.DataClass.Value(data_class))
