"""How good a model is on labeled images: `transfer evaluate`, and the metrics and report at the end of a run.

Both go the same way: probabilities for every image, then
:func:`transfer.reports.metrics.classification_metrics`, the confusion matrix, the
images with the highest loss, and ``report.html``.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import data, inputs, outputs, probe_record, runs, selection
from ..config import PREDICT_BATCH
from ..errors import DataError, TransferError
from ..data.images import MAX_PIXELS
from .metrics import classification_metrics, losses
from .report import Report, png_bytes, write as write_report

log = logging.getLogger("transfer")

#: images in top_losses.png and in the report's worst-errors table
WORST = 16
GRADCAM_EXAMPLES = 4  # Grad-CAM maps in a report: those of the worst errors


@dataclass
class Evaluation:
    """What :func:`evaluate` wrote (``path``) and what evaluation.json holds (``record``)."""

    path: str
    record: dict[str, Any]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.record["metrics"]


def evaluate(model: str, data_dir: str, *, split: str | None = None, output: str | None = None,
             batch_size: int = PREDICT_BATCH, max_pixels: int = MAX_PIXELS, cache_dir: str | None = None,
             allow_missing: bool = False, unsafe: bool = False, progress: bool = False) -> Evaluation:
    """Evaluate ``model`` (anything :func:`transfer.runners.load_model` takes) on the labeled images of ``data_dir``
    and write evaluation.json, confusion_matrix.png, misclassified.csv, top_losses.png and report.html into
    ``output`` [default: MODEL/evaluations/<data> for a run folder, ./evaluation-<data> otherwise].

    Files that cannot be used are skipped and listed, as in training. Classes of
    the folder that the model does not know are an error; so are classes of the
    model that the folder lacks, unless ``allow_missing``.
    """
    from ..runners import load_model

    data_dir, split = inputs.path(data_dir, "data_dir"), inputs.name(split, "split", optional=True)
    output, cache_dir = inputs.path(output, "output", optional=True), inputs.path(cache_dir, "cache_dir", optional=True)
    root, _, split_dirs = data.check_layout(data_dir)
    split = data.pick_split(root, split_dirs, split)
    name = os.path.basename(os.path.normpath(root)) + ("" if split == "all" else f"-{split}")
    folder = runs.EvaluationFolder(output or default_output(model, name))
    run = outputs.run_of(model)
    outputs.check_output(folder.final, "--output", datasets=[root], run=run,
                         own=[os.path.join(run, runs.EVALUATIONS_FOLDER)] if run else [])
    loaded = load_model(model, unsafe)
    # the classes are checked before the audit reads a file (it keeps them all, or fails)
    index = _class_index(data.class_folders(split_dirs[split], root), loaded.labels, split_dirs[split], allow_missing)
    dataset = data.scan_labeled(root, None if split == "all" else split, max_pixels=max_pixels, cache_dir=cache_dir,
                                progress=progress)
    log.info("evaluating %s on %d images of %s", loaded.source, len(dataset.splits[split]), split_dirs[split])
    paths, y_true, probs, unreadable = _predict(loaded, dataset.splits[split], index, root, batch_size, max_pixels)
    metrics = classification_metrics(y_true, probs, loaded.labels)
    worst = worst_rows(paths, y_true, probs, loaded.labels, root)
    skipped = [{"path": data.display_path(c.path, root), "reason": c.reason} for c in dataset.report.skipped]
    record = {"model": loaded.source, "model_kind": loaded.kind, "data": root, "folder": split_dirs[split],
              "split": split, "name": name, "labels": loaded.labels, "metrics": metrics, "skipped": skipped,
              "unreadable": unreadable}
    gradcam = gradcam_examples(loaded.keras_model, worst, loaded.image_size, loaded.resize)
    folder.start()
    _write_evaluation(folder, record, worst, dataset, gradcam)
    return Evaluation(folder.commit(), record)


def _predict(loaded, examples: list[data.Example], index: list[int], root: str, batch_size: int, max_pixels: int):
    """(paths, the model's class numbers, probabilities, unreadable files) of the images that could be decoded."""
    from ..prediction import probabilities

    paths, y_true, rows, unreadable = [], [], [], []
    for example, (path, probs, error) in zip(examples, probabilities(loaded, [e.path for e in examples],
                                                                     batch_size, max_pixels)):
        if error:
            log.warning("skipped %s: %s", data.display_path(path, root), error)
            unreadable.append({"path": data.display_path(path, root), "reason": error})
            continue
        paths.append(path)
        y_true.append(index[example.label])
        rows.append(probs)
    if not rows:
        raise DataError(f"no image under {root!r} could be read; see the reasons above.")
    return paths, np.array(y_true), np.stack(rows), unreadable


def default_output(model: str, name: str) -> str:
    """MODEL/evaluations/<name> for a run folder (it goes with the run), ./evaluation-<name> for anything else."""
    if runs.is_run_folder(model):
        return os.path.join(model, runs.EVALUATIONS_FOLDER, name)
    return os.path.abspath(f"evaluation-{name}")


def _class_index(classes: list[str], labels: list[str], folder: str, allow_missing: bool) -> list[int]:
    """The model's class number of each class folder; a class on one side only is an error naming it."""
    unknown = [c for c in classes if c not in labels]
    if unknown:
        raise DataError(f"{folder!r} has classes that the model does not know: {', '.join(map(repr, unknown))} "
                        f"(it knows {', '.join(map(repr, labels))}); remove or rename those folders.")
    missing = [label for label in labels if label not in classes]
    if missing and not allow_missing:
        raise DataError(f"{folder!r} has no folder for the model's classes {', '.join(map(repr, missing))}; add "
                        "them, or pass --allow-missing-classes to evaluate without them.")
    if missing:
        log.warning("%s has no images of %s: their recall is 0", folder, ", ".join(map(repr, missing)))
    return [labels.index(c) for c in classes]


def worst_rows(paths: list[str], y_true: np.ndarray, probs: np.ndarray, labels: list[str],
               root: str) -> list[dict[str, Any]]:
    """One row per image (file, true and predicted class, their probabilities, loss), highest loss first."""
    loss = losses(y_true, probs)
    predicted = probs.argmax(axis=1)
    order = np.argsort(-loss, kind="stable")
    return [{"path": paths[i], "file": data.display_path(paths[i], root), "true": labels[y_true[i]],
             "predicted": labels[predicted[i]], "probability": float(probs[i, predicted[i]]),
             "true_probability": float(probs[i, y_true[i]]), "loss": float(loss[i])} for i in order]


def gradcam_examples(model, rows: list[dict[str, Any]], size: tuple[int, int], resize: str,
                     count: int = GRADCAM_EXAMPLES) -> list[tuple[str, bytes]]:
    """Grad-CAM of the ``count`` highest-loss images of ``rows`` (the report's worst errors), as (caption, PNG).

    Where the model looks is most telling where it is wrong. None for a model
    without gradients (a SavedModel, .tflite or .onnx), or when no map can be
    made: the report is still written, with the reason in the log.
    """
    from .explain import heatmaps, overlay
    from ..data.images import load_image

    rows = rows[:count]
    if model is None or not rows:
        return []
    try:
        images = np.stack([load_image(row["path"], size, resize) for row in rows])
        layer, _, maps = heatmaps(model, images, layer=None)
    except (TransferError, ValueError) as error:
        log.warning("the report has no Grad-CAM examples: %s", error)
        return []
    return [(f"{row['file']}: true {row['true']}, predicted {row['predicted']} ({row['probability']:.2f}); "
             f"layer {layer}", _png(overlay(image.astype(np.float32), heatmap)))
            for row, image, heatmap in zip(rows, images, maps)]


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_misclassified(rows: list[dict[str, Any]], path: str) -> None:
    """misclassified.csv: the images whose prediction is wrong, highest loss first."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file", "true", "predicted", "predicted_probability", "true_probability", "loss"])
    for row in rows:
        if row["true"] != row["predicted"]:
            writer.writerow(data.csv_row([row["file"], row["true"], row["predicted"], f"{row['probability']:.6f}",
                                          f"{row['true_probability']:.6f}", f"{row['loss']:.6f}"]))
    runs.write_text(path, buffer.getvalue())


def _write_evaluation(folder: runs.EvaluationFolder, record: dict[str, Any], worst: list[dict[str, Any]],
                      dataset: data.Dataset, gradcam) -> None:
    from .plots import plot_confusion, plot_top_losses

    metrics = record["metrics"]
    runs.write_json(folder.path(runs.EVALUATION_FILE), record)
    plot_confusion(metrics["confusion_matrix"], record["labels"], folder.path(runs.CONFUSION_FILE))
    write_misclassified(worst, folder.path(runs.MISCLASSIFIED_FILE))
    plot_top_losses(worst[:WORST], folder.path(runs.TOP_LOSSES_FILE))
    facts = [("model", f"{record['model']} ({record['model_kind']})"), ("images", record["folder"]),
             ("evaluated", f"{metrics['images']} images"),
             ("skipped", f"{len(record['skipped'])} by the audit, {len(record['unreadable'])} unreadable")]
    plots = [("Confusion matrix", png_bytes(folder.path(runs.CONFUSION_FILE)))]
    write_report(Report(f"Evaluation on {record['name']}", facts, {record["name"]: metrics}, plots,
                        counts=dataset.counts(), skipped=_skipped_pairs(record), worst=worst[:WORST],
                        gradcam=list(gradcam)), folder.path(runs.REPORT_FILE))


def _skipped_pairs(record: dict[str, Any]) -> list[tuple[str, str]]:
    return [(s["path"], s["reason"]) for s in record["skipped"] + record["unreadable"]]


def report_run(run: runs.RunFolder, model, config, dataset: data.Dataset, metrics: dict[str, Any],
               probabilities: dict[str, np.ndarray]) -> dict[str, Any]:
    """At the end of training: per-class metrics of val (and test) added to ``metrics`` and metrics.json,
    confusion_matrix.png (val) and report.html in the run folder. Returns the metrics.

    ``probabilities``: the model's on each split, from training's final evaluation
    (:func:`transfer.training.results.evaluate`), which made that pass already.
    """
    from .plots import plot_confusion

    started = time.monotonic()
    worst = []
    for split in ("val", "test"):
        if split not in dataset.splits:
            continue
        probs = np.asarray(probabilities[split], dtype=np.float64)
        y_true = np.array([e.label for e in dataset.splits[split]])
        metrics[split] = {**classification_metrics(y_true, probs, dataset.classes), **metrics[split]}
        if split == "val":
            worst = worst_rows([e.path for e in dataset.splits[split]], y_true, probs, dataset.classes, dataset.root)
    plot_confusion(metrics["val"]["confusion_matrix"], dataset.classes, run.path(runs.CONFUSION_FILE))
    gradcam = gradcam_examples(model, worst, (config.image_size, config.image_size), config.resize)
    write_report(_run_page(run, config, dataset, metrics, worst[:WORST], gradcam), run.path(runs.REPORT_FILE))
    metrics["seconds"]["report"] = round(time.monotonic() - started, 2)  # this function: metrics, plots, Grad-CAM, page
    runs.write_json(run.path(runs.METRICS_FILE), metrics)
    return metrics


def _run_page(run: runs.RunFolder, config, dataset: data.Dataset, metrics: dict[str, Any],
              worst: list[dict[str, Any]], gradcam) -> Report:
    """What a run's report.html shows: the run, its metrics, learning curves, confusion matrix, worst errors,
    dataset and settings, and the measured choices (backbone, fine-tuning) with their tables."""
    facts = [("run", run.final), ("backbone", config.backbone), ("data", dataset.root),
             ("best epoch", f"{metrics['best_epoch']} ({metrics['best_phase']})"),
             ("training time", f"{metrics['train_seconds']:.0f} s")]
    plots = [(caption, png) for caption, png in (("Learning curves", png_bytes(run.path(runs.PLOT_FILE))),
                                                 ("Confusion matrix (val)", png_bytes(run.path(runs.CONFUSION_FILE))))
             if png]
    skipped = [(data.display_path(c.path, dataset.root), c.reason) for c in dataset.report.skipped]
    skipped += [(data.display_path(p, dataset.root), "left out by --exclude") for p in dataset.report.excluded]
    splits = {split: metrics[split] for split in ("val", "test") if split in metrics}
    return Report(f"Run {run.name}", facts, splits, plots, config.to_dict(), dataset.counts(), skipped, worst,
                  list(gradcam), tables=selection.report_table(run.path(runs.BACKBONE_CHOICE_FILE))
                  + probe_record.report_table(run.path(runs.FINE_TUNE_PROBE_FILE), run.path(runs.DEEPER_PROBE_FILE)))
