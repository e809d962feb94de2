"""The ``transfer`` command line: parse options into a config, call the library, print.

Results go to stdout; logs and progress bars to stderr. TensorFlow is imported
only inside commands that need it, so ``transfer --help`` is instant.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import logging
import os
import sys

import click
from click.core import ParameterSource

from transfer import backbones as registry
from transfer import preflight
from transfer.config import (AUGMENT_PRESETS, CACHE_FEATURES, CLASS_WEIGHTS, FEATURE_ENGINES, LR_SCHEDULES,
                             MIXED_PRECISION, MONITORS, OPTIMIZERS, POOLINGS, RESIZE_MODES, default)
from transfer.presets import PRESETS, apply_preset
from transfer.tflite import QUANTIZATIONS
from transfer.errors import TransferError
from transfer.runs import json_text


def _handle_errors(command):
    """Library errors become one ``Error: ...`` line and exit status 1; never a traceback.

    So do the errors of the machine rather than of the code: a file that cannot
    be written or read (a full disk, a permission), and memory running out.
    """

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except TransferError as error:
            raise click.ClickException(str(error)) from None
        except OSError as error:
            if error.errno is None:
                raise
            where = f" {_show(error.filename)!r}" if error.filename else ""
            raise click.ClickException(f"cannot use{where}: {error.strerror}; check the path, its permissions and "
                                       "the free disk space.") from None
        except MemoryError:
            raise click.ClickException("out of memory; lower --batch-size or --image-size.") from None
        except KeyboardInterrupt:
            click.echo("Interrupted; finished runs and exports are untouched.", err=True)
            sys.exit(130)

    return wrapper


def _setup_logging(quiet: bool) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    logger = logging.getLogger("transfer")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.handlers[0].setStream(sys.stderr)  # the current stderr (a test runner swaps it per command)
    logger.propagate = False  # TensorFlow's absl handler on the root logger would print every line twice
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def _dense_sizes(ctx, param, values):
    """``--dense 1024 --dense 256`` or ``--dense 1024,256``; ``--dense none`` for no hidden layer."""
    if not values:
        return None
    sizes = []
    for value in values:
        for part in value.split(","):
            if part.strip().lower() == "none":
                continue
            try:
                sizes.append(int(part))
            except ValueError:
                raise click.BadParameter(f"expected sizes like 1024 or 1024,256, got {value!r}") from None
    return tuple(sizes)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="transfer")
def main():
    """Turn a folder of labeled images into a deployable image classifier.

    \b
    transfer backbones                        list the models you can start from
    transfer inspect photos/                  audit a dataset folder: counts, problems
    transfer train photos/ --backbone resnet50
    transfer predict models/<run>/ new_photos/ --top-k 3
    transfer evaluate models/<run>/ labeled_photos/   metrics, confusion matrix, worst errors, report.html
    transfer export models/<run>/             SavedModel for TensorFlow Serving
    transfer export models/<run>/ --format tflite --quantize int8   TensorFlow Lite, verified
    """


@main.command("backbones")
@click.option("--json", "as_json", is_flag=True, help="Print the registry as JSON.")
def backbones_command(as_json):
    """List the backbones: name, input size, parameters, preprocessing, unfreeze point, where weights come from."""
    rows = [registry.describe(registry.get(name)) for name in registry.names()]
    if as_json:
        click.echo(json_text(rows))
        return
    header = ("name", "kind", "size", "params", "preprocessing", "unfreeze", "imagenet weights")
    table = [header] + [(r["name"], r["kind"], str(r["input_size"]), _count(r["params"]),
                         r["preprocessing"], r["unfreeze"], r["weights"]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def audit_options(command):
    """Options shared by `train` and `inspect`: how images are found and checked."""
    for option in reversed([
        click.option("--max-pixels", type=int, default=default("max_pixels"), show_default=True,
                     help="Refuse larger images (checked from the header, before decoding)."),
        click.option("--dedupe", is_flag=True, help="Drop exact duplicate images (same bytes), keeping one."),
        click.option("--cache-dir", default=None, help="Cache folder [default: ~/.cache/transfer]."),
    ]):
        command = option(command)
    return command


@main.command("inspect")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--val-split", type=float, default=default("val_split"), show_default=True)
@click.option("--seed", type=int, default=default("seed"), show_default=True)
@audit_options
@click.option("--json", "as_json", is_flag=True, help="Print the audit as JSON.")
@_handle_errors
def inspect_command(data_dir, val_split, seed, max_pixels, dedupe, cache_dir, as_json):
    """Audit DATA_DIR without training: classes, counts, sizes, formats and every problem file.

    \b
    Example:
      transfer inspect photos/ --json
    """
    _setup_logging(quiet=True)
    from transfer.data import scan, summary

    report = summary(scan(data_dir, val_split, seed, max_pixels=max_pixels, dedupe=dedupe, cache_dir=cache_dir,
                          progress=not as_json))
    if as_json:
        click.echo(json_text(report))
    else:
        _print_inspection(report)


def _print_inspection(r: dict) -> None:
    click.echo(f"{r['root']}: {len(r['classes'])} classes, {r['images']} images "
               f"({'split folders' if r['split_source'] == 'folders' else 'random validation split'})")
    splits = list(r["counts"])
    width = max(len(c) for c in r["classes"])
    click.echo("  " + "class".ljust(width) + "".join(s.rjust(8) for s in splits))
    for c in r["classes"]:
        click.echo("  " + c.ljust(width) + "".join(str(r["counts"][s][c]).rjust(8) for s in splits))
    click.echo(f"imbalance (largest/smallest train class): {r['imbalance_ratio']}")
    if r["sizes"]:
        click.echo("sizes (w x h): " + ", ".join(f"{k} {v[0]}x{v[1]}" for k, v in r["sizes"].items()))
    click.echo("formats: " + ", ".join(f"{k} {v}" for k, v in r["formats"].items()))
    click.echo(f"skipped: {len(r['skipped'])}, outside class folders: {len(r['unused'])}, "
               f"ignored: {r['ignored']} non-image and {r['hidden_or_system']} hidden/system files, duplicate groups: {len(r['duplicates'])} "
               f"({len(r['leaks'])} across splits)")
    for row in r["skipped"]:
        click.echo(f"  skipped {row['path']}: {row['reason']}")
    for row in r["notes"]:
        click.echo(f"  note {row['path']}: {row['note']}")
    for path in r["unused"]:
        click.echo(f"  not used {path}: outside any class folder")
    for group in r["leaks"]:
        click.echo(f"  leakage: {' = '.join(group)}")


@main.command("train")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--preset", type=click.Choice(list(PRESETS)), default=None,
              help="Start from a named set of settings (options you give still win); see README.")
@click.option("-b", "--backbone", default=default("backbone"), show_default=True,
              help="Registry name (see `transfer backbones`), or a .keras model or run folder to transfer from.")
@click.option("--weights", default=None,
              help="imagenet (default for pretrained backbones), none, or PATH of a no-top weights file.")
@click.option("--image-size", type=int, default=None, help="Square input size in pixels [default: the backbone's].")
@click.option("--width", type=float, default=default("width"), help="Filter multiplier (from-scratch nets).")
@click.option("--depth", type=int, default=None, help="Number of conv blocks (from-scratch nets).")
@click.option("--pooling", type=click.Choice(POOLINGS), default=None, help="Head pooling [default: the backbone's].")
@click.option("--dense", multiple=True, callback=_dense_sizes, help="Hidden dense sizes, e.g. 1024 or 1024,256.")
@click.option("--dropout", type=float, default=None, help="Head dropout rate [default: the backbone's].")
@click.option("--l2", type=float, default=default("l2"), show_default=True, help="L2 penalty on head weights.")
@click.option("--batch-norm/--no-batch-norm", default=default("batch_norm"), help="Batch norm after head dense layers.")
@click.option("--val-split", type=float, default=default("val_split"), show_default=True,
              help="Validation fraction when DATA_DIR has no val/ folder.")
@click.option("--seed", type=int, default=default("seed"), show_default=True, help="Seed for the split and training.")
@click.option("--batch-size", type=int, default=default("batch_size"), show_default=True)
@click.option("--augment", type=click.Choice(AUGMENT_PRESETS), default=None,
              help="Training-time augmentation: flip (mirror images; feature caching keeps it, so it costs one more "
              "pass of the backbone), light or strong (flips, rotation, translation, zoom[, contrast]: every epoch "
              "runs the backbone) [default: flip for pretrained backbones, light for from-scratch nets].")
@click.option("--resize", type=click.Choice(RESIZE_MODES), default=default("resize"), show_default=True,
              help="squash to the input size, or keep aspect ratio and centre-crop.")
@click.option("--tta/--no-tta", default=default("tta"), show_default=True,
              help="Test-time augmentation: the model averages its predictions on each image and its mirror "
              "image (validation, predict and export alike; twice the inference cost).")
@click.option("--class-weight", type=click.Choice(CLASS_WEIGHTS), default=default("class_weight"), show_default=True,
              help="auto: balanced class weights when the largest class is over 1.5x the smallest.")
@audit_options
@click.option("--strict", is_flag=True, help="Stop if any image file cannot be used.")
@click.option("--max-skip-fraction", type=float, default=default("max_skip_fraction"), show_default=True,
              help="Stop if more than this fraction of image files cannot be used.")
@click.option("--epochs", type=int, default=default("epochs"), show_default=True,
              help="Phase 1 epochs (head only, backbone frozen).")
@click.option("--lr", type=float, default=default("lr"), show_default=True, help="Phase 1 learning rate.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=default("optimizer"), show_default=True)
@click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES), default=default("lr_schedule"), show_default=True,
              help="plateau: divide by 5 when validation stalls; cosine: decay to 0 over each phase.")
@click.option("--weight-decay", type=float, default=None,
              help="Decoupled weight decay for either phase's optimizer [default: the optimizer's own, "
              "0.004 for adamw, none for the others].")
@click.option("--label-smoothing", type=float, default=default("label_smoothing"), show_default=True,
              help="Train towards 1 - s + s/n for the true class and s/n for the others instead of 1 and 0.")
@click.option("--fine-tune-epochs", type=int, default=None,
              help="Phase 2 epochs [default: 10 for pretrained backbones, 0 for from-scratch nets].")
@click.option("--fine-tune-lr", type=float, default=default("fine_tune_lr"), show_default=True)
@click.option("--fine-tune-optimizer", type=click.Choice(OPTIMIZERS), default=default("fine_tune_optimizer"),
              show_default=True)
@click.option("--unfreeze", default=None,
              help="Where fine-tuning starts: all, N (top N layers), LAYER or after:LAYER [default: the backbone's].")
@click.option("--patience", type=int, default=default("patience"), show_default=True,
              help="Early-stopping patience in epochs (in validations with --validation-freq).")
@click.option("--monitor", type=click.Choice(MONITORS), default=default("monitor"), show_default=True,
              help="Validation metric for checkpoints, early stopping and LR reduction.")
@click.option("--restore-best/--keep-last", default=default("restore_best"),
              help="End with the best epoch on validation (default) or the last one.")
@click.option("--time-limit", default=None, metavar="DURATION",
              help="Stop training after this long (90s, 15m, 1.5h; counted from the start, the last validation "
              "and saving follow), whatever --epochs says; with --lr-schedule cosine the decay follows the time, "
              "so it ends on schedule on any machine. none: no limit.")
@click.option("--validation-freq", type=int, default=default("validation_freq"), show_default=True,
              help="Validate every N epochs and on each phase's last one (validation is skipped in between, "
              "which saves its time; --patience then counts validations).")
@click.option("--cache-features", type=click.Choice(CACHE_FEATURES), default=default("cache_features"),
              show_default=True, help="Compute the frozen backbone's features once and train phase 1 on them "
              "(auto: when the backbone is frozen and --augment none or flip; stored under --cache-dir).")
@click.option("--cache-memory", default=default("cache_memory"), show_default=True,
              help="RAM for each in-memory cache (decoded images, cached features): a size (4G, 512M) or a "
              "percentage of RAM. Cached features beyond it are streamed from --cache-dir.")
@click.option("--mixed-precision", type=click.Choice(MIXED_PRECISION), default=default("mixed_precision"),
              show_default=True, help="float16 compute with float32 weights and output (auto: only with a GPU).")
@click.option("--feature-engine", type=click.Choice(FEATURE_ENGINES), default=default("feature_engine"),
              show_default=True, help="What computes cached features: auto (TFLite/XNNPACK on a CPU, several times "
              "faster for EfficientNet-Lite and MobileNet, checked against Keras on the first batch), tflite, keras.")
@click.option("--jit/--no-jit", default=default("jit"), show_default=True, help="Compile training with XLA.")
@click.option("-o", "--output-dir", default=default("output_dir"), show_default=True, help="Where run folders go.")
@click.option("--name", default=None, help="Run folder name [default: timestamp-backbone].")
@click.option("--overwrite", is_flag=True, help="Replace an existing run of the same name (once the new one finishes).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or logs.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
@_handle_errors
def train_command(ctx, preset, quiet, as_json, **options):
    """Train a classifier on DATA_DIR (one subfolder per class, or train/ val/ [test/]).

    \b
    Example:
      transfer train photos/ --backbone resnet50 --epochs 5 --fine-tune-epochs 5
    """
    _setup_logging(quiet)
    explicit = {k: v for k, v in options.items() if ctx.get_parameter_source(k) is not ParameterSource.DEFAULT}
    explicit["verbose"] = 0 if quiet else (1 if sys.stderr.isatty() else 2)
    config = apply_preset(preset, explicit)
    preflight.check(config, open_models=False)  # every error that needs no TensorFlow, before its slow import
    from transfer.training import train

    with contextlib.redirect_stdout(sys.stderr):  # Keras' progress bars print to stdout
        result = train(config)
    summary = {"run_dir": result.run_dir, "labels": result.labels, "metrics": result.metrics}
    if as_json:
        click.echo(json_text(summary))
        return
    val = result.metrics["val"]
    click.echo(f"run: {result.run_dir}")
    click.echo(f"validation accuracy {val['accuracy']:.4f}, loss {val['loss']:.4f} "
               f"(best epoch {result.metrics['best_epoch']}, {result.metrics['best_phase']})")
    if "test" in result.metrics:
        click.echo(f"test accuracy {result.metrics['test']['accuracy']:.4f}, loss {result.metrics['test']['loss']:.4f}")


unsafe_option = click.option(
    "--unsafe", is_flag=True, help="Load a .keras model that holds Python code (a Lambda layer), which runs as it "
    "loads: only for files you trust.")


@main.command("predict")
@click.argument("model", type=click.Path(exists=True))
@click.argument("inputs", nargs=-1, required=True)
@click.option("-k", "--top-k", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--max-pixels", type=click.IntRange(min=1), default=default("max_pixels"), show_default=True,
              help="Refuse larger images (checked from the header, before decoding).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV.")
@unsafe_option
@click.option("-q", "--quiet", is_flag=True, help="No logs.")
@_handle_errors
def predict_command(model, inputs, top_k, batch_size, max_pixels, unsafe, as_json, as_csv, quiet):
    """Predict the labels of images: files, folders (recursive) or globs.

    MODEL is a run folder, a .keras file, an exported SavedModel or a .tflite. Exit status
    is 1 if any input could not be read (the others are still predicted).

    \b
    Example:
      transfer predict models/my-run/ new_photos/ 'more/*.jpg' --top-k 3 --json
    """
    if as_json and as_csv:
        raise click.UsageError("--json and --csv cannot be used together; choose one.")
    _setup_logging(quiet)
    from transfer.predict import predict

    with contextlib.redirect_stdout(sys.stderr):
        result = predict(model, list(inputs), top_k=top_k, batch_size=batch_size, max_pixels=max_pixels,
                         unsafe=unsafe)
    (_print_json if as_json else _print_csv if as_csv else _print_table)(result)
    if result.failures:
        sys.exit(1)


@main.command("evaluate")
@click.argument("model", type=click.Path(exists=True))
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--split", default=None, help="With train/ val/ test/ folders: the split to evaluate "
              "[default: test, else val, else train].")
@click.option("-o", "--output", default=None,
              help="Folder to write [default: MODEL/evaluations/<data> for a run, ./evaluation-<data> otherwise].")
@click.option("--allow-missing-classes", is_flag=True, help="Evaluate even if DATA_DIR lacks some of the model's "
              "classes (their recall counts as 0).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--max-pixels", type=click.IntRange(min=1), default=default("max_pixels"), show_default=True,
              help="Skip larger images (checked from the header, before decoding).")
@click.option("--cache-dir", default=None, help="Audit cache folder [default: ~/.cache/transfer].")
@unsafe_option
@click.option("-q", "--quiet", is_flag=True, help="No logs.")
@click.option("--json", "as_json", is_flag=True, help="Print evaluation.json instead of the table.")
@_handle_errors
def evaluate_command(model, data_dir, split, output, allow_missing_classes, batch_size, max_pixels, cache_dir, unsafe,
                     quiet, as_json):
    """Measure MODEL on the labeled images of DATA_DIR (class folders, or train/ val/ test/ folders).

    MODEL is a run folder, a .keras file, an exported SavedModel or a .tflite. Writes evaluation.json,
    confusion_matrix.png, misclassified.csv, top_losses.png and report.html. Files that
    cannot be used are skipped and listed; classes on one side only are an error.
    Exit status: 0 done, 1 error, 2 bad usage.

    \b
    Example:
      transfer evaluate models/my-run/ photos/ --split test
    """
    _setup_logging(quiet)
    from transfer.evaluation import evaluate

    with contextlib.redirect_stdout(sys.stderr):
        result = evaluate(model, data_dir, split=split, output=output, batch_size=batch_size, max_pixels=max_pixels,
                          cache_dir=cache_dir, allow_missing=allow_missing_classes, unsafe=unsafe,
                          progress=not quiet and not as_json)
    if as_json:
        click.echo(json_text({**result.record, "output": result.path}))
    else:
        _print_evaluation(result.metrics, result.path)


def _print_evaluation(m: dict, output: str) -> None:
    click.echo(f"{m['images']} images: accuracy {m['accuracy']:.4f}, top-{m['top_k']} accuracy "
               f"{m['top_k_accuracy']:.4f}, log loss {m['log_loss']:.4f}")
    rows = [(label, r["precision"], r["recall"], r["f1"], r["support"]) for label, r in m["per_class"].items()]
    rows += [(f"{name} average", m[name]["precision"], m[name]["recall"], m[name]["f1"], m["images"])
             for name in ("macro", "weighted")]
    width = max(len(_show(row[0])) for row in rows)
    click.echo("  " + "class".ljust(width) + "".join(h.rjust(11) for h in ("precision", "recall", "f1", "support")))
    for label, precision, recall, f1, support in rows:
        click.echo("  " + _show(label).ljust(width) + f"{precision:11.4f}{recall:11.4f}{f1:11.4f}{support:11d}")
    for note in m["notes"]:
        click.echo(f"note: {note}")
    click.echo(f"written: {output}")


def _show(path: str) -> str:
    """A path that can be printed, even when its name is not valid UTF-8."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _print_table(result):
    for p in result.predictions:
        others = ", ".join(f"{label} {prob:.3f}" for label, prob in p.top_k[1:])
        click.echo(f"{_show(p.path)}\t{p.label}\t{p.probability:.3f}" + (f"\t{others}" if others else ""))
    for path, reason in result.failures:
        click.echo(f"Error: {_show(path)}: {reason}", err=True)


def _print_json(result):
    click.echo(json_text({"predictions": [{**p.to_dict(), "path": _show(p.path)} for p in result.predictions],
                          "errors": [{"path": _show(path), "error": reason} for path, reason in result.failures]}))


def _print_csv(result):
    from transfer.data import csv_cell

    writer = csv.writer(sys.stdout)
    writer.writerow(["path", "label", "probability", "top_k", "error"])
    for p in result.predictions:
        writer.writerow([csv_cell(_show(p.path)), csv_cell(p.label), f"{p.probability:.6f}",
                         ";".join(f"{label}:{prob:.6f}" for label, prob in p.top_k), ""])
    for path, reason in result.failures:
        writer.writerow([csv_cell(_show(path)), "", "", "", reason])


@main.command("export")
@click.argument("model", type=click.Path(exists=True))
@click.option("-o", "--output", default=None, help="Base folder [default: MODEL/export].")
@click.option("--name", default=None, help="Model name in the serving layout [default: the run's name].")
@click.option("--format", "fmt", type=click.Choice(["saved_model", "tflite"]), default="saved_model",
              show_default=True, help="saved_model: for TensorFlow Serving; tflite: for phones and edge devices.")
@click.option("--quantize", type=click.Choice(QUANTIZATIONS), default=None,
              help="tflite only: float32 (none, the default), float16 weights, dynamic-range int8 weights, or "
                   "full int8 (uint8 pixels in, calibrated on the run's training images).")
@click.option("--data", type=click.Path(exists=True, file_okay=False), default=None,
              help="tflite int8: calibrate on the images under this folder instead of the run's training images.")
@click.option("--version", "version", type=click.IntRange(min=1), default=None,
              help="saved_model: version number [default: the next free one].")
@unsafe_option
@click.option("-q", "--quiet", is_flag=True, help="No logs.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_handle_errors
def export_command(model, output, name, fmt, quantize, data, version, unsafe, quiet, as_json):
    """Export a run, verified: a SavedModel or TensorFlow Lite.

    --format saved_model writes OUTPUT/NAME/VERSION/ for TensorFlow Serving;
    --format tflite writes OUTPUT/NAME/tflite-QUANTIZE/ with model.tflite,
    labels.txt and metadata.json. The SavedModel's serving_default signature takes `image` (float32 RGB 0-255 at
    the model's input size; preprocessing is inside) and returns `probabilities`;
    labels.txt is written beside the version folders. Every export is checked
    against the Keras model before it is kept: the .tflite on the run's
    validation images (top-1 agreement and largest probability difference).

    \b
    Examples:
      transfer export models/my-run/ --output serving/
      transfer export models/my-run/ --format tflite --quantize int8
    """
    if fmt == "saved_model" and (quantize or data):
        raise click.UsageError("--quantize and --data apply to --format tflite only.")
    if fmt == "tflite" and version is not None:
        raise click.UsageError("--version applies to --format saved_model only.")
    _setup_logging(quiet)
    if fmt == "tflite":
        return _export_tflite(model, output, name, quantize or "none", data, unsafe, as_json)
    from transfer.export import export

    with contextlib.redirect_stdout(sys.stderr):
        result = export(model, output=output, name=name, version=version, unsafe=unsafe)
    if as_json:
        click.echo(json_text({"path": result.path, "version": result.version, "labels": result.labels,
                              "max_abs_diff": result.max_abs_diff}))
    else:
        click.echo(f"exported: {result.path} (max difference from the Keras model {result.max_abs_diff:.2g})")


def _export_tflite(model, output, name, quantize, data, unsafe, as_json):
    from transfer.export import export_tflite

    with contextlib.redirect_stdout(sys.stderr):
        result = export_tflite(model, output=output, name=name, quantize=quantize, data=data, unsafe=unsafe)
    if as_json:
        click.echo(json_text(result.to_dict()))
    else:
        click.echo(f"exported: {result.path} ({result.size / 2**20:.2f} MiB, {quantize}); on {result.images} "
                   f"validation images: top-1 agreement with the Keras model {result.top1_agreement:.1%}, "
                   f"max |Δp| {result.max_abs_diff:.2g}")


if __name__ == "__main__":
    main()
