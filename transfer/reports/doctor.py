"""``transfer doctor``: wrong labels, near-duplicates and outliers in a dataset folder, before training.

Everything here works on the pooled features of a pretrained backbone, of
each image and its mirror image, read from the feature cache that ``transfer
train`` fills (same backbone, same settings), so a ``doctor`` followed by a
``train`` runs the backbone over each image once (a ``train`` that caches the
image alone reads the first view):

- **label issues**: out-of-fold probabilities from k logistic-regression heads
  on the features (each image is scored by a head that never saw it), then
  confident learning (``cleanlab.filter.find_label_issues``) flags the images
  whose given label the others contradict, ranked by how little the heads
  believe it;
- **near-duplicates**: pairs of images whose features have a cosine similarity
  above a measured threshold, grouped, and told apart by what they share:
  the same split and class (redundant copies), different splits (leakage
  between training and validation) or different classes (conflicting labels);
- **outliers**: images whose features are far from the centre of every class.

Nothing in the dataset is moved or deleted: ``transfer train --exclude`` takes
the CSV files written here.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .. import data, inputs, runs
from ..config import DOCTOR_FOLDS as FOLDS, DUPLICATE_THRESHOLD, TrainConfig
from ..errors import ConfigError
from ..data.images import MAX_PIXELS
from ..outputs import check_output

log = logging.getLogger("transfer")

#: near-duplicates are compared as tiny pictures: each image squashed to 16 x 16 RGB, its mean taken away (so
#: brightness does not count) and scaled to length 1, and the image's mirror image too
THUMBNAIL = 16
#: an image is an outlier when its similarity to the nearest class centre is this many robust standard deviations
#: (1.4826 x the median absolute deviation) below the median of all images. Measured with 5 photos of another
#: set planted in 1000 (BENCHMARKS.md): at 5, all 5 found in blood cells and monkeys with 10 and 3 other images
#: flagged; at 3, 63 and 28 flagged. In cats vs dogs the planted blood cells score only 2.9-3.3: unusual cat and
#: dog photos are as far from both centres, so a short list was chosen over catching those
OUTLIER_DEVIATIONS = 5.0
#: the logistic regressions' inverse regularisation, on standardised features (measured: BENCHMARKS.md)
INVERSE_REGULARISATION = 0.05
#: cleanlab's rule: an image is an issue when both the confident joint and the estimated noise rates say so
#: (measured against "prune_by_noise_rate" and "confident_learning": fewer false alarms at the same recall)
FILTER = "both"
INSTALL = "pip install 'transfer[doctor]'"
CONTACT_SHEET = 24  # suspects shown in suspects.png
FILES = {"label_issues": "label_issues.csv", "near_duplicates": "near_duplicates.csv", "outliers": "outliers.csv",
         "record": "doctor.json", "sheet": "suspects.png", "report": "report.html"}


@dataclass
class Diagnosis:
    """What :func:`doctor` found; ``record`` is what ``--json`` prints and doctor.json holds."""

    root: str
    classes: list[str]
    label_issues: list[dict[str, Any]]
    near_duplicates: list[dict[str, Any]]
    outliers: list[dict[str, Any]]
    images: int
    backbone: str
    seconds: float
    output: str | None = None

    @property
    def record(self) -> dict[str, Any]:
        return {"data": self.root, "classes": self.classes, "images": self.images, "backbone": self.backbone,
                "label_issues": self.label_issues, "near_duplicates": self.near_duplicates,
                "outliers": self.outliers, "seconds": round(self.seconds, 1), "output": self.output}


def doctor(data_dir: str, *, backbone: str | None = None, output: str | None = None, folds: int = FOLDS,
           duplicate_threshold: float = DUPLICATE_THRESHOLD, seed: int = 42, val_split: float = 0.2,
           batch_size: int = 32, max_pixels: int = MAX_PIXELS, cache_dir: str | None = None,
           progress: bool = False) -> Diagnosis:
    """Look for label issues, near-duplicates and outliers in ``data_dir`` (the layouts ``train`` reads).

    ``output``: a folder to write the CSV files, suspects.png and report.html
    into (a new folder, or one doctor wrote before). ``val_split`` and ``seed``
    give the split ``train`` would make with the same options, so that the
    near-duplicates that span it are reported as leakage.
    """
    started = time.monotonic()
    _require_extra()
    config = _config(data_dir, inputs.name(backbone, "backbone", optional=True), batch_size, max_pixels, cache_dir,
                     seed, val_split)
    _check_options(folds, duplicate_threshold)
    folder = _output_folder(inputs.path(output, "output", optional=True), config.data_dir)
    dataset = data.scan(config.data_dir, val_split, seed, max_pixels=max_pixels, cache_dir=cache_dir,
                        progress=progress)
    examples = [(split, e) for split, items in dataset.splits.items() for e in items]
    labels = np.array([e.label for _, e in examples])
    folds = _folds(dataset.classes, labels, folds)
    rows = _features(config, dataset, [e for _, e in examples])
    probs = out_of_fold_probabilities(rows, labels, folds, seed)
    paths = [data.display_path(e.path, dataset.root) for _, e in examples]
    issues = label_issues(probs, labels, paths, dataset.classes)
    pictures = thumbnails([e.path for _, e in examples], max_pixels)
    diagnosis = Diagnosis(
        dataset.root, dataset.classes, issues,
        near_duplicates(pictures, paths, labels, [s for s, _ in examples], dataset.classes, duplicate_threshold),
        outliers(rows[:, 0], labels, paths, dataset.classes), len(examples), config.backbone,
        time.monotonic() - started)
    if folder is not None:
        suspects = _suspects(issues, probs, paths, [e.path for _, e in examples])
        diagnosis.output = _write(folder, diagnosis, dataset, suspects)
    return diagnosis


def _suspects(issues: list[dict[str, Any]], probs: np.ndarray, paths: list[str],
              files: list[str]) -> list[dict[str, Any]]:
    """The top label issues as rows of the report's image table and the contact sheet (evaluate's worst rows)."""
    index = {p: i for i, p in enumerate(paths)}
    rows = []
    for issue in issues[:CONTACT_SHEET]:
        i, given = index[issue["path"]], 1 - issue["score"]
        rows.append({"path": files[i], "file": issue["path"], "true": issue["given"], "predicted": issue["suggested"],
                     "probability": float(probs[i].max()), "true_probability": given,
                     "loss": float(-np.log(max(given, 1e-12)))})
    return rows


def _require_extra() -> None:
    """Before any slow work: the optional packages that fit the heads and find the issues."""
    try:
        import cleanlab.filter  # noqa: F401
        import sklearn.linear_model  # noqa: F401
    except ImportError:
        raise ConfigError(f"transfer doctor needs the optional package cleanlab; install it with: {INSTALL}") from None


def _config(data_dir, backbone, batch_size, max_pixels, cache_dir, seed, val_split) -> TrainConfig:
    """The settings ``train`` would use for this backbone, so the feature cache is shared with it."""
    from .. import backbones

    config = TrainConfig(data_dir=inputs.path(data_dir, "data_dir"), batch_size=batch_size, max_pixels=max_pixels,
                         cache_dir=cache_dir, seed=seed, val_split=val_split,
                         **({"backbone": backbone} if backbone else {})).validate()
    spec, config = backbones.resolve(config)
    if not spec.pretrained:
        raise ConfigError(f"transfer doctor needs a pretrained backbone; {spec.name} is trained from scratch. "
                          "Leave out --backbone, or name one with ImageNet weights (see `transfer backbones`).")
    # each image and its mirror image, whatever train caches: on 1000 photos with planted flips, recall 0.86 -> 0.90
    # (cats vs dogs) and 0.76 -> 0.84 (blood cells) against the image alone (BENCHMARKS.md); a train with one view
    # reads the first of them from the cache
    return replace(config, augment="flip")


def _check_options(folds: int, threshold: float) -> None:
    if not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"--folds must be an integer of at least 2. Received: {folds!r}.")
    if not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ConfigError(f"--duplicate-threshold must be a cosine similarity in (0, 1]. Received: {threshold!r}.")


def _folds(classes: list[str], labels: np.ndarray, folds: int) -> int:
    """Fewer folds when the smallest class has fewer images than ``folds`` (the scan has made sure every class has
    two at the least), so that each fold's head still learns every class."""
    smallest = int(np.bincount(labels, minlength=len(classes)).min())
    if smallest < folds:
        log.info("%d folds, not %d: the smallest class has %d images", smallest, folds, smallest)
    return min(folds, smallest)


def _features(config: TrainConfig, dataset: data.Dataset, examples: list[data.Example]) -> np.ndarray:
    """The backbone's pooled features of each image and its mirror image, ``(images, 2, features)``, from (and
    into) the cache ``train`` reads."""
    from .. import backbones, features
    from ..heads import build_model

    spec = backbones.get(config.backbone)
    model = build_model(spec, config, len(dataset.classes))
    cache = features.frozen_phase_cache(model, config, {c.path: c.digest for c in dataset.report.used})
    rows = cache.features(examples)
    log.info("features: %d from the cache, %d computed", cache.hits, cache.computed)
    return rows.astype(np.float32)


def out_of_fold_probabilities(rows: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each image's class probabilities from a head trained on the other folds (stratified), never on itself.

    ``rows``: ``(images, views, features)``. Each head learns from every view
    and averages its predictions over an image's views (measured: a little more
    accurate out of fold than the image alone, so fewer false alarms)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probs = np.zeros((len(labels), int(labels.max()) + 1), np.float64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    views = rows.shape[1]
    for fit, held_out in splitter.split(rows[:, 0], labels):
        head = make_pipeline(StandardScaler(), LogisticRegression(C=INVERSE_REGULARISATION, max_iter=500))
        head.fit(rows[fit].reshape(-1, rows.shape[-1]), np.repeat(labels[fit], views))
        seen = np.mean([head.predict_proba(rows[held_out, v]) for v in range(views)], axis=0)
        probs[np.ix_(held_out, head.classes_)] = seen
    return probs


def label_issues(probs: np.ndarray, labels: np.ndarray, paths: list[str], classes: list[str]) -> list[dict[str, Any]]:
    """Confident learning's label issues, most suspect first: ``score`` is 1 - p(given label) out of fold."""
    from cleanlab.filter import find_label_issues

    ranked = find_label_issues(labels, probs, filter_by=FILTER, return_indices_ranked_by="self_confidence")
    return [{"path": paths[i], "given": classes[labels[i]], "suggested": classes[int(probs[i].argmax())],
             "score": round(float(1 - probs[i, labels[i]]), 4)} for i in ranked]


def thumbnails(paths: list[str], max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """``(images, 2, 3 * THUMBNAIL**2)``: each image's thumbnail and its mirror image's (see :data:`THUMBNAIL`)."""
    from ..data.images import load_image

    pictures = np.stack([load_image(p, (THUMBNAIL, THUMBNAIL), max_pixels=max_pixels) for p in paths])
    pictures = np.stack([pictures, pictures[:, :, ::-1]], axis=1).reshape(len(paths), 2, -1).astype(np.float32)
    return _unit(pictures - pictures.mean(axis=-1, keepdims=True))


def near_duplicates(pictures: np.ndarray, paths: list[str], labels: np.ndarray, splits: list[str],
                    classes: list[str], threshold: float = DUPLICATE_THRESHOLD) -> list[dict[str, Any]]:
    """Groups of images whose thumbnails (:func:`thumbnails`), or one's and the other's mirror image, are at least
    ``threshold`` alike (cosine), most alike first; ``kind`` says whether a group spans classes (conflicting
    labels), splits (leakage) or neither (redundant copies)."""
    unit, mirrored = pictures[:, 0], pictures[:, 1]
    parent = list(range(len(unit)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    best: dict[int, float] = {}
    for start in range(0, len(unit), 512):  # block by block: the full matrix of 100k images would not fit
        block = unit[start:start + 512]
        similar = np.maximum(block @ unit.T, block @ mirrored.T)
        for i, j in zip(*np.nonzero(similar >= threshold)):
            i = int(i) + start
            if j > i:
                a, b = root(i), root(int(j))
                parent[max(a, b)] = min(a, b)
                best[i] = max(best.get(i, 0.0), float(similar[i - start, j]))
    groups: dict[int, list[int]] = {}
    for i in range(len(unit)):
        groups.setdefault(root(i), []).append(i)
    found = []
    for members in (m for m in groups.values() if len(m) > 1):
        similarity = min(best[a] for a in members if a in best)  # the weakest link that holds the group together
        found.append({"paths": [paths[i] for i in members], "similarity": round(similarity, 4),
                      "kind": _kind({labels[i] for i in members}, {splits[i] for i in members}),
                      "classes": sorted({classes[labels[i]] for i in members}),
                      "splits": sorted({splits[i] for i in members})})
    return sorted(found, key=lambda g: -g["similarity"])


def _kind(labels: set, splits: set) -> str:
    if len(labels) > 1:
        return "conflicting labels"
    return "leakage across splits" if len(splits) > 1 else "redundant copies"


def outliers(features: np.ndarray, labels: np.ndarray, paths: list[str], classes: list[str],
             deviations: float = OUTLIER_DEVIATIONS) -> list[dict[str, Any]]:
    """Images far from the centre of every class, farthest first: their similarity to the nearest class centre is
    ``deviations`` robust standard deviations below the median image's."""
    unit = _unit(features)
    centres = _unit(np.stack([unit[labels == c].mean(axis=0) for c in range(len(classes))]))
    similarity = unit @ centres.T
    nearest = similarity.max(axis=1)
    median = float(np.median(nearest))
    spread = 1.4826 * float(np.median(np.abs(nearest - median))) or 1e-6
    score = (median - nearest) / spread
    order = np.argsort(-score, kind="stable")
    return [{"path": paths[i], "given": classes[labels[i]], "nearest": classes[int(similarity[i].argmax())],
             "similarity": round(float(nearest[i]), 4), "score": round(float(score[i]), 2)}
            for i in order if score[i] >= deviations]


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)


def _output_folder(output: str | None, data_dir: str) -> runs.EvaluationFolder | None:
    """Checked before any slow work: never in a dataset or a run, never over a folder doctor did not write."""
    if output is None:
        return None
    check_output(output, "--output", datasets=[data_dir])
    return runs.EvaluationFolder(output, command="transfer doctor")


def _write(folder: runs.EvaluationFolder, diagnosis: Diagnosis, dataset: data.Dataset,
           suspects: list[dict[str, Any]]) -> str:
    """The CSV files, the contact sheet, doctor.json and report.html, into place together."""
    folder.start()
    _write_csv(folder.path(FILES["label_issues"]), ["path", "given", "suggested", "score"], diagnosis.label_issues)
    _write_csv(folder.path(FILES["near_duplicates"]), ["group", "path", "similarity", "kind"],
               [{"group": n, "path": p, "similarity": g["similarity"], "kind": g["kind"]}
                for n, g in enumerate(diagnosis.near_duplicates, 1) for p in g["paths"]])
    _write_csv(folder.path(FILES["outliers"]), ["path", "given", "nearest", "similarity", "score"], diagnosis.outliers)
    runs.write_json(folder.path(FILES["record"]), diagnosis.record)
    if suspects:  # the top label issues, as rows of the report's image table
        from .plots import plot_top_losses

        plot_top_losses(suspects, folder.path(FILES["sheet"]), words=("given", "suggested"), columns=6)
    _write_report(folder, diagnosis, dataset, suspects)
    return folder.commit()


def _write_csv(path: str, columns: list[str], rows: list[dict[str, Any]]) -> None:
    """Cells that a spreadsheet would take for a formula are escaped, as in predict's CSV."""
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: data.csv_cell(v) if isinstance(v, str) else v for k, v in row.items()} for row in rows)
    runs.write_text(path, text.getvalue())


def _write_report(folder: runs.EvaluationFolder, diagnosis: Diagnosis, dataset: data.Dataset,
                  suspects: list[dict[str, Any]]) -> None:
    from .report import Report, write

    groups = [[n, g["kind"], f"{g['similarity']:.3f}", "\n".join(g["paths"])]
              for n, g in enumerate(diagnosis.near_duplicates, 1)]
    far = [[o["path"], o["given"], o["nearest"], f"{o['similarity']:.3f}", f"{o['score']:.1f}"]
           for o in diagnosis.outliers]
    report = Report(
        title=f"transfer doctor: {os.path.basename(os.path.normpath(diagnosis.root))}",
        facts=[("data", diagnosis.root), ("images", str(diagnosis.images)), ("backbone", diagnosis.backbone),
               ("label issues", str(len(diagnosis.label_issues))),
               ("near-duplicate groups", str(len(diagnosis.near_duplicates))),
               ("outliers", str(len(diagnosis.outliers)))],
        worst=suspects, worst_title="Suspected label issues, most suspect first", worst_words=("given", "suggested"),
        tables=[("Near-duplicate groups", ["group", "kind", "similarity", "files"], groups),
                ("Outliers: far from every class", ["file", "given", "nearest class", "similarity", "score"], far)],
        counts=dataset.counts(), skipped=[(data.display_path(c.path, dataset.root), c.reason)
                                          for c in dataset.report.skipped])
    write(report, folder.path(FILES["report"]))


__all__ = ["Diagnosis", "doctor", "DUPLICATE_THRESHOLD"]
