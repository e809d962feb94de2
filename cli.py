"""The ``transfer`` command line: parse options into a config, call the library, print.

Results go to stdout; logs and progress bars to stderr. Every default is read
from ``transfer.config``; the texts printed are built in ``transfer.console``.
Nothing heavier than the config is imported until a command runs, so
``transfer --help`` imports neither TensorFlow nor NumPy.
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

from transfer import config, console, runs
from transfer.config import (AUGMENT_PRESETS, CACHE_FEATURES, CLASS_WEIGHTS, DISTRIBUTE, FEATURE_ENGINES, LR_SCHEDULES,
                             FAST_EPOCHS, FAST_PATIENCE, FINE_TUNE_MODES, FIT_EPOCHS, FIT_PATIENCE, HEAD_FITS,
                             MIXED_PRECISION, MONITORS, OPTIMIZERS, POOLINGS, RESIZE_MODES, default)
from transfer.errors import TransferError
from transfer.export import FORMATS, QUANTIZATIONS
from transfer.presets import PRESETS
from transfer.runs import json_text

#: the options that set how much memory a command takes, named when it runs out; other commands have none
MEMORY_OPTIONS = {"train": "--batch-size or --image-size", "predict": "--batch-size", "evaluate": "--batch-size"}


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
            where = f" {console.show(error.filename)!r}" if error.filename else ""
            raise click.ClickException(f"cannot use{where}: {error.strerror}; check the path, its permissions and "
                                       "the free disk space.") from None
        except MemoryError:
            options = MEMORY_OPTIONS.get(click.get_current_context().info_name)
            hint = f"lower {options}" if options else "close other programs, or use a machine with more memory"
            raise click.ClickException(f"out of memory; {hint}.") from None
        except KeyboardInterrupt as error:  # transfer.errors.Interrupted says how to resume, and its exit status
            click.echo(str(error) or "Interrupted; finished runs and exports are untouched.", err=True)
            sys.exit(getattr(error, "status", 130))

    return wrapper


def _setup_logging(quiet: bool) -> None:
    logger = logging.getLogger("transfer")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.handlers[0].setStream(sys.stderr)  # the current stderr (a test runner swaps it per command)
    logger.propagate = False  # TensorFlow's absl handler on the root logger would print every line twice
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def _say_device() -> None:
    """Which device TensorFlow computes on, once, in our words (this imports TensorFlow, quietly)."""
    logging.getLogger("transfer").info(console.device_line())


def _start(quiet: bool) -> None:
    """What each command that runs a model does first: logs to stderr, then the device."""
    _setup_logging(quiet)
    _say_device()


def _echo(text: str) -> None:
    """Print a result's text, and nothing (not even an empty line) when there is none."""
    if text:
        click.echo(text)


def _echo_failures(failures: list[tuple[str, str]]) -> None:
    for line in console.failures(failures):
        click.echo(line, err=True)


def _verbose(ctx, param, value):
    """``-v`` before or after the command: TensorFlow's own logs come back (it has not been imported yet)."""
    if value:
        ctx.meta["transfer.verbose"] = True  # shared by the group's and the command's contexts
        console.loud()


def _names(ctx, param, value):
    """``a,b,c`` -> ("a", "b", "c")."""
    return None if value is None else tuple(part.strip() for part in value.split(",") if part.strip())


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


def _path_list(ctx, param, value):
    """``--exclude FILE``: the paths it lists; the scan checks that each is one of DATA_DIR's images."""
    if value is None:
        return ()
    from transfer.data import read_path_list

    try:
        return read_path_list(value)
    except TransferError as error:
        raise click.BadParameter(str(error)) from None


# ---- options shared by several commands ------------------------------------------------------------------------------

def _options(*options):
    """A decorator that adds ``options`` in the order given (click adds the last one first)."""

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


verbose_option = click.option("-v", "--verbose", is_flag=True, expose_value=False, is_eager=True, callback=_verbose,
                              help="Also TensorFlow's own start-up and C++ logs (hidden by default).")
unsafe_option = click.option(
    "--unsafe", is_flag=True, help="Load a .keras model that holds Python code (a Lambda layer), which runs as it "
    "loads: only for files you trust.")
model_argument = click.argument("model", type=click.Path(exists=True))
data_dir_argument = click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
cache_dir_option = click.option("--cache-dir", default=None, help="Cache folder [default: ~/.cache/transfer].")
batch_size_option = click.option("--batch-size", type=click.IntRange(min=1), default=config.PREDICT_BATCH,
                                 show_default=True)
seed_option = click.option("--seed", type=int, default=default("seed"), show_default=True)


def max_pixels_option(verb: str = "Refuse"):
    """``--max-pixels`` of the commands that read images for a model: ``verb`` says what happens to a larger one."""
    return click.option("--max-pixels", type=click.IntRange(min=1), default=default("max_pixels"), show_default=True,
                        help=f"{verb} larger images (checked from the header, before decoding).")


def quiet_option(help: str = "No logs."):
    return click.option("-q", "--quiet", is_flag=True, help=help)


def json_option(help: str = "Print JSON."):
    return click.option("--json", "as_json", is_flag=True, help=help)


def output_option(help: str):
    return click.option("-o", "--output", default=None, help=help)


#: train and inspect: how images are found and checked (doctor too)
audit_options = _options(
    click.option("--max-pixels", type=int, default=default("max_pixels"), show_default=True,
                 help="Refuse larger images (checked from the header, before decoding)."),
    click.option("--dedupe", is_flag=True, help="Drop exact duplicate images (same bytes), keeping one."),
    cache_dir_option)
#: the commands that load a model and print what it gives: its safety, logs and TensorFlow's own
model_options = _options(unsafe_option, quiet_option(), verbose_option)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="transfer")
@verbose_option
@click.pass_context
def main(ctx):
    """Turn a folder of labeled images into a deployable image classifier.

    \b
    transfer backbones                        list the models you can start from
    transfer inspect photos/                  audit a dataset folder: counts, problems
    transfer train photos/ --backbone resnet50
    transfer predict models/<run>/ new_photos/ --top-k 3
    transfer doctor photos/ -o checkup        wrong labels, near-duplicates, outliers: before training
    transfer evaluate models/<run>/ labeled_photos/   metrics, confusion matrix, worst errors, report.html
    transfer export models/<run>/             SavedModel for TensorFlow Serving
    transfer export models/<run>/ --format tflite --quantize int8   TensorFlow Lite, verified
    transfer explain models/<run>/ cat.jpg    Grad-CAM: where the model looks
    transfer visualize models/<run>/ --image cat.jpg   first-layer filters, activation maps
    transfer serve models/<run>/              TF Serving's REST API on 127.0.0.1:8501
    """
    if not ctx.meta.get("transfer.verbose"):
        console.quiet_start()  # before anything imports TensorFlow


@main.command("backbones")
@json_option("Print the registry as JSON.")
def backbones_command(as_json):
    """List the backbones: name, input size, parameters, preprocessing, unfreeze point, where weights come from."""
    from transfer import backbones as registry

    rows = [registry.describe(registry.get(name)) for name in registry.names()]
    click.echo(json_text(rows) if as_json else console.backbones_table(rows))


@main.group("weights")
def weights_group():
    """Pretrained weights: fetch them now, e.g. before going offline."""


@weights_group.command("fetch")
@click.argument("name")
@cache_dir_option
@_handle_errors
def weights_fetch_command(name, cache_dir):
    """Fetch (and convert) the ImageNet weights of backbone NAME, as the first `train` would.

    Example: transfer weights fetch vgg16
    """
    from transfer import backbones as registry

    click.echo(registry.fetch_weights(name, cache_dir))


@main.command("inspect")
@data_dir_argument
@click.option("--val-split", type=float, default=default("val_split"), show_default=True)
@seed_option
@audit_options
@json_option("Print the audit as JSON.")
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
    click.echo(json_text(report) if as_json else console.inspection(report))


@main.command("train")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False), required=False)
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Settings from a JSON or TOML file (a run's config.json too, to train it again); options you "
              "give win over it, and it wins over --preset. It may give data_dir in place of DATA_DIR.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default=None,
              help="Start from a named set of settings (options you give still win); see docs/training.md, Presets.")
@click.option("-b", "--backbone", default=default("backbone"), show_default=True,
              help="Registry name (see `transfer backbones`), a .keras model or run folder to transfer from, or "
              "auto: measure the pretrained backbones on this data and keep the best (see docs/auto.md).")
@click.option("--candidates", default=None, callback=_names,
              help="With --backbone auto: the backbones compared, e.g. efficientnet_lite0,inceptionv3 [default: "
              "every pretrained one whose weights need no download by Keras].")
@click.option("--weights", default=None,
              help="imagenet (default for pretrained backbones), keras (Keras' download), none, or PATH of a no-top "
              "weights file (for inceptionv3 and vgg16 also their pinned archive or its weights file).")
@unsafe_option
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
@click.option("--seed", type=int, default=default("seed"), show_default=True,
              help="Seed for the split and training (Python, NumPy and TensorFlow).")
@click.option("--deterministic/--no-deterministic", default=default("deterministic"), show_default=True,
              help="Use TensorFlow's deterministic ops, so that the same --seed, data and options give the same "
              "weights (slower on a GPU).")
@click.option("--batch-size", type=int, default=default("batch_size"), show_default=True,
              help="Images per step on each replica (GPU or worker): a step takes this times the replicas.")
@click.option("--augment", type=click.Choice(AUGMENT_PRESETS), default=None,
              help="Training-time augmentation: flip (mirror images; feature caching keeps it, so it costs one more "
              "pass of the backbone), light or strong (flips, rotation, translation, zoom[, contrast]: every epoch "
              "runs the backbone) [default: the backbone's: none for efficientnet_lite0 (its larger input buys "
              "more than the mirror view), inceptionv3 and vgg16, flip for other pretrained ones, light for "
              "from-scratch nets].")
@click.option("--resize", type=click.Choice(RESIZE_MODES), default=default("resize"), show_default=True,
              help="squash to the input size, or keep aspect ratio and centre-crop.")
@click.option("--tta/--no-tta", default=default("tta"), show_default=True,
              help="Test-time augmentation: the model averages its predictions on each image and its mirror "
              "image (validation, predict and export alike; twice the inference cost).")
@click.option("--class-weight", type=click.Choice(CLASS_WEIGHTS), default=default("class_weight"), show_default=True,
              help="auto: balanced class weights when the largest class is over 1.5x the smallest.")
@audit_options
@click.option("--exclude", type=click.Path(exists=True, dir_okay=False), default=None, callback=_path_list,
              help="Leave out the files listed in FILE (relative to DATA_DIR): a CSV with a 'path' column, such as "
              "transfer doctor's label_issues.csv, or one path a line.")
@click.option("--strict", is_flag=True, help="Stop if any image file cannot be used.")
@click.option("--max-skip-fraction", type=float, default=default("max_skip_fraction"), show_default=True,
              help="Stop if more than this fraction of image files cannot be used.")
@click.option("--epochs", type=int, default=None,
              help="Phase 1's most epochs (head only, backbone frozen; early stopping may end it sooner) "
              f"[default: {FAST_EPOCHS} on cached features, else {FIT_EPOCHS}].")
@click.option("--head-fit", type=click.Choice(HEAD_FITS), default=default("head_fit"), show_default=True,
              help="Phase 1 on cached features in RAM: auto/fast run each epoch as one compiled step "
              "(milliseconds; one device), keras runs Keras' fit.")
@click.option("--lr", type=float, default=default("lr"), show_default=True, help="Phase 1 learning rate.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=default("optimizer"), show_default=True)
@click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES), default=default("lr_schedule"), show_default=True,
              help="plateau: divide by 5 when validation stalls; cosine: decay to 0 over each phase.")
@click.option("--weight-decay", type=float, default=None,
              help="Decoupled weight decay for either phase's optimizer [default: the optimizer's own, "
              "0.004 for adamw, none for the others].")
@click.option("--label-smoothing", type=float, default=default("label_smoothing"), show_default=True,
              help="Train towards 1 - s + s/n for the true class and s/n for the others instead of 1 and 0.")
@click.option("--fine-tune", type=click.Choice(FINE_TUNE_MODES), default=None,
              help="Phase 2: on; off; auto: a short probe after phase 1 fine-tunes only where it beats the head "
              "on validation (and where it does, a second one decides on --deeper-unfreeze), else keeps the head; "
              "within 9 minutes of the start unless --time-limit says otherwise "
              "[default: the backbone's: auto for EfficientNet-Lite, else on; "
              "on where --fine-tune-epochs is given].")
@click.option("--fine-tune-epochs", type=int, default=None,
              help="Phase 2's maximum of epochs [default: the backbone's: 10 for most pretrained ones, 0 for "
              "InceptionV3, VGG16 and from-scratch nets].")
@click.option("--fine-tune-lr", type=float, default=default("fine_tune_lr"), show_default=True)
@click.option("--fine-tune-optimizer", type=click.Choice(OPTIMIZERS), default=None,
              help="[default: the backbone's: adam for EfficientNet-Lite, else sgd].")
@click.option("--unfreeze", default=None,
              help="Where fine-tuning starts: all, N (top N layers), LAYER or after:LAYER [default: the backbone's].")
@click.option("--deeper-unfreeze", default=None, metavar="after:LAYER|none",
              help="--fine-tune auto: once fine-tuning paid, a probe of fine-tuning from this deeper point decides "
              "whether the run goes deeper, within 9 minutes of the start (or --time-limit); none: never "
              "[default: the backbone's (EfficientNet-Lite: blocks 5-7); none where --unfreeze is given].")
@click.option("--patience", type=int, default=None,
              help="Early-stopping patience in epochs (in validations with --validation-freq) "
              f"[default: {FAST_PATIENCE} where phase 1 runs on cached features, else {FIT_PATIENCE}].")
@click.option("--monitor", type=click.Choice(MONITORS), default=default("monitor"), show_default=True,
              help="Validation metric for checkpoints, early stopping and LR reduction.")
@click.option("--restore-best/--keep-last", default=default("restore_best"),
              help="End with the best epoch on validation (default) or the last one.")
@click.option("--time-limit", "--time-budget", "time_limit", default=None, metavar="DURATION",
              help="Stop training after this long (90s, 15m, 1.5h; counted from the start, the last validation "
              "and saving follow), whatever --epochs says; fine-tuning is skipped, and the run says so, when "
              "its first epoch (timed on one batch) would not fit; with --lr-schedule cosine the decay follows the time, "
              "so it ends on schedule on any machine. none: no limit.")
@click.option("--tensorboard", default=None, metavar="DIR", help="Write each epoch's loss, accuracy and learning "
              "rate (both phases) and the final confusion matrix for TensorBoard: tensorboard --logdir DIR.")
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
              show_default=True, help="What computes cached features: auto (TFLite/XNNPACK on a CPU from 1000 images, several times "
              "faster for EfficientNet-Lite and MobileNet, checked against Keras on the first batch), tflite, keras.")
@click.option("--distribute", type=click.Choice(DISTRIBUTE), default=default("distribute"), show_default=True,
              help="mirrored: every GPU of this machine; multiworker: the machines TF_CONFIG names; auto: "
              "multiworker when TF_CONFIG names a cluster, mirrored with several GPUs, else none (one device).")
@click.option("--cluster-timeout", default=default("cluster_timeout"), show_default=True, metavar="DURATION",
              help="multiworker: how long to wait for every worker TF_CONFIG names to start (the log names the ones "
              "awaited every few seconds); none: no limit.")
@click.option("--jit/--no-jit", default=default("jit"), show_default=True, help="Compile training with XLA.")
@click.option("-o", "--output-dir", default=default("output_dir"), show_default=True, help="Where run folders go.")
@click.option("--name", default=None, help="Run folder name [default: timestamp-backbone].")
@click.option("--overwrite", is_flag=True, help="Replace an existing run of the same name (once the new one finishes).")
@click.option("--resume", is_flag=True, help="Continue the unfinished run --name (killed or interrupted) from its last "
              "finished epoch, with the settings it was started with.")
@quiet_option("No progress bars or logs.")
@verbose_option
@json_option("Print the result as JSON.")
@click.pass_context
@_handle_errors
def train_command(ctx, preset, config_file, quiet, as_json, resume, **options):
    """Train a classifier on DATA_DIR (one subfolder per class, or train/ val/ [test/]).

    \b
    Examples:
      transfer train photos/ --backbone resnet50 --epochs 5 --fine-tune-epochs 5
      transfer train --config models/<run>/config.json --epochs 20
    """
    from transfer import configfile, preflight

    _setup_logging(quiet)
    explicit = {k: v for k, v in options.items() if ctx.get_parameter_source(k) is not ParameterSource.DEFAULT}
    explicit["verbose"] = 0 if quiet else (1 if sys.stderr.isatty() else 2)
    settings = configfile.merge(preset, configfile.load(config_file) if config_file else {}, explicit)
    preflight.check(settings, open_models=False, resume=resume)  # every error that needs no TensorFlow, before its import
    from transfer.training import distribute

    distribute.await_cluster(settings)  # a cluster's other workers answer: before TensorFlow starts, too
    _say_device()
    from transfer.training import train

    with contextlib.redirect_stdout(sys.stderr):  # Keras' progress bars print to stdout
        result = train(settings, resume=resume)
    saved = distribute.writes_run(settings)  # a worker that is not the chief: its run folder is already deleted
    if as_json:
        click.echo(json_text({"run_dir": result.run_dir if saved else None, "labels": result.labels,
                              "metrics": result.metrics}))
    elif not saved:
        click.echo("trained as a worker of the cluster; the chief saved the run")
    else:
        report = os.path.join(result.run_dir, runs.REPORT_FILE)
        click.echo(console.summary_table(result.run_dir, result.metrics,
                                         report=report if os.path.isfile(report) else None))


@main.command("predict")
@model_argument
@click.argument("inputs", nargs=-1, required=True)
@click.option("-k", "--top-k", type=click.IntRange(min=1), default=config.TOP_K, show_default=True)
@batch_size_option
@max_pixels_option()
@json_option()
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV.")
@model_options
@_handle_errors
def predict_command(model, inputs, top_k, batch_size, max_pixels, unsafe, as_json, as_csv, quiet):
    """Predict the labels of images: files, folders (recursive) or globs.

    MODEL is a run folder, a .keras file, an exported SavedModel, a .tflite or an .onnx. Exit status
    is 1 if any input could not be read (the others are still predicted).

    \b
    Example:
      transfer predict models/my-run/ new_photos/ 'more/*.jpg' --top-k 3 --json
    """
    if as_json and as_csv:
        raise click.UsageError("--json and --csv cannot be used together; choose one.")
    _start(quiet)
    from transfer.prediction import predict

    with contextlib.redirect_stdout(sys.stderr):
        result = predict(model, list(inputs), top_k=top_k, batch_size=batch_size, max_pixels=max_pixels,
                         unsafe=unsafe)
    if as_json:
        click.echo(json_text(console.predictions_json(result)))
    elif as_csv:
        _write_csv(result)
    else:
        _echo(console.predictions_table(result))
        _echo_failures(result.failures)
    if result.failures:
        sys.exit(1)


def _write_csv(result) -> None:
    """One row per image, failures included, every cell guarded against spreadsheet formulas."""
    from transfer.data import csv_row

    writer = csv.writer(sys.stdout)
    writer.writerow(["path", "label", "probability", "top_k", "error"])
    for p in result.predictions:
        writer.writerow(csv_row([console.show(p.path), p.label, f"{p.probability:.6f}",
                                 ";".join(f"{label}:{prob:.6f}" for label, prob in p.top_k), ""]))
    for path, reason in result.failures:
        writer.writerow(csv_row([console.show(path), "", "", "", reason]))


@main.command("evaluate")
@model_argument
@data_dir_argument
@click.option("--split", default=None, help="With train/ val/ test/ folders: the split to evaluate "
              "[default: test, else val, else train].")
@output_option("Folder to write [default: MODEL/evaluations/<data> for a run, ./evaluation-<data> otherwise].")
@click.option("--allow-missing-classes", is_flag=True, help="Evaluate even if DATA_DIR lacks some of the model's "
              "classes (their recall counts as 0).")
@batch_size_option
@max_pixels_option("Skip")
@click.option("--cache-dir", default=None, help="Audit cache folder [default: ~/.cache/transfer].")
@unsafe_option
@quiet_option()
@json_option("Print evaluation.json instead of the table.")
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
    from transfer.reports.evaluate import evaluate

    with contextlib.redirect_stdout(sys.stderr):
        result = evaluate(model, data_dir, split=split, output=output, batch_size=batch_size, max_pixels=max_pixels,
                          cache_dir=cache_dir, allow_missing=allow_missing_classes, unsafe=unsafe,
                          progress=not quiet and not as_json)
    click.echo(json_text({**result.record, "output": result.path}) if as_json
               else console.evaluation(result.metrics, result.path))


@main.command("doctor")
@data_dir_argument
@click.option("-b", "--backbone", default=default("backbone"), show_default=True,
              help="The pretrained backbone whose features are compared (train's cache is shared).")
@output_option("Folder to write label_issues.csv, near_duplicates.csv, outliers.csv, suspects.png and report.html "
               "into.")
@click.option("--folds", type=click.IntRange(min=2), default=config.DOCTOR_FOLDS, show_default=True,
              help="Out-of-fold heads: each image is judged by a head that never saw it.")
@click.option("--duplicate-threshold", type=click.FloatRange(0, 1, min_open=True),
              default=config.DUPLICATE_THRESHOLD, show_default=True,
              help="Cosine similarity of thumbnails above which images are near-duplicates (measured).")
@click.option("--val-split", type=float, default=default("val_split"), show_default=True,
              help="As for train: near-duplicates across train's split are leakage.")
@seed_option
@audit_options
@quiet_option()
@json_option("Print label_issues, near_duplicates and outliers as JSON.")
@_handle_errors
def doctor_command(data_dir, backbone, output, folds, duplicate_threshold, val_split, seed, max_pixels, dedupe,
                   cache_dir, quiet, as_json):
    """Find likely wrong labels, near-duplicates and outliers in DATA_DIR before training. Moves nothing.

    Wrong labels: out-of-fold heads on a pretrained backbone's features, then
    confident learning (cleanlab). Leave the files out of training with
    `transfer train DATA_DIR --exclude OUTPUT/label_issues.csv`.

    \b
    Example:
      transfer doctor photos/ -o doctor-photos
    """
    _setup_logging(quiet or as_json)
    if dedupe:
        raise click.UsageError("--dedupe does not apply to doctor: it reports duplicates and changes nothing.")
    from transfer.reports.doctor import doctor

    with contextlib.redirect_stdout(sys.stderr):
        result = doctor(data_dir, backbone=backbone, output=output, folds=folds, seed=seed, val_split=val_split,
                        duplicate_threshold=duplicate_threshold, max_pixels=max_pixels, cache_dir=cache_dir,
                        progress=not quiet and not as_json)
    click.echo(json_text(result.record) if as_json else console.diagnosis(result))


@main.command("export")
@model_argument
@output_option("Base folder [default: MODEL/export].")
@click.option("--name", default=None, help="Model name in the serving layout [default: the run's name].")
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)), default="saved_model",
              show_default=True, help="saved_model: for TensorFlow Serving; tflite: for phones and edge devices; "
              "onnx: for onnxruntime (pip install 'transfer[onnx]').")
@click.option("--quantize", type=click.Choice(QUANTIZATIONS), default=None,
              help="tflite only: float32 (none, the default), float16 weights, dynamic-range int8 weights, or "
                   "full int8 (uint8 pixels in, calibrated on the run's training images).")
@click.option("--data", type=click.Path(exists=True, file_okay=False), default=None,
              help="Check the export on the images under this folder instead of the run's validation images "
                   "(tflite int8: calibrate on them too, instead of the run's training images).")
@click.option("--version", "version", type=click.IntRange(min=1), default=None,
              help="saved_model: version number [default: the next free one].")
@model_options
@json_option("Print the result as JSON.")
@_handle_errors
def export_command(model, output, name, fmt, quantize, data, version, unsafe, quiet, as_json):
    """Export a run, verified: a SavedModel, TensorFlow Lite or ONNX.

    --format saved_model writes OUTPUT/NAME/VERSION/ for TensorFlow Serving;
    --format tflite writes OUTPUT/NAME/tflite-QUANTIZE/ with model.tflite,
    labels.txt and metadata.json; --format onnx writes OUTPUT/NAME/onnx/ with model.onnx,
    labels.txt and metadata.json. The SavedModel's serving_default signature takes `image_bytes` (encoded
    JPEG, PNG, GIF or BMP files; decoded, resized and preprocessed inside), predict_images takes `image` (float32
    RGB 0-255 at the model's input size); both return `probabilities`, `classes` and `scores` (the top 5).
    labels.txt is written beside the version folders. Every export is checked
    against the Keras model on the run's validation images before it is kept
    (top-1 agreement and largest probability difference).

    \b
    Examples:
      transfer export models/my-run/ --output serving/
      transfer export models/my-run/ --format tflite --quantize int8
      transfer export models/my-run/ --format onnx
    """
    if quantize and fmt != "tflite":
        raise click.UsageError("--quantize applies to --format tflite only.")
    if fmt != "saved_model" and version is not None:
        raise click.UsageError("--version applies to --format saved_model only.")
    _start(quiet)
    from transfer.export import export_as

    given = {key: value for key, value in (("quantize", quantize), ("version", version)) if value is not None}
    with contextlib.redirect_stdout(sys.stderr):
        result = export_as(fmt, model, output=output, name=name, data=data, unsafe=unsafe, **given)
    click.echo(json_text(result.to_dict()) if as_json else result.summary())


@main.command("serve")
@model_argument
@click.option("--host", default=config.SERVE_HOST, show_default=True,
              help="Address to listen on; 0.0.0.0 opens it to the network (there is no authentication).")
@click.option("--port", type=click.IntRange(0, 65535), default=config.SERVE_PORT, show_default=True,
              help="TCP port (TF Serving's REST port is 8501; 0: any free port).")
@click.option("--model-name", default=None, help="The <name> in /v1/models/<name> [default: the run's name].")
@click.option("--max-batch", type=click.IntRange(min=1), default=config.SERVE_MAX_BATCH, show_default=True,
              help="Most images in one request.")
@click.option("--max-body", type=click.IntRange(min=1), default=config.SERVE_MAX_BODY, show_default=True,
              help="Largest request body in bytes (413 beyond it).")
@max_pixels_option()
@click.option("--drain-timeout", type=click.FloatRange(min=0), default=config.SERVE_DRAIN_TIMEOUT, show_default=True,
              help="Seconds that requests in flight at Ctrl-C or SIGTERM get to finish (new connections are refused).")
@unsafe_option
@quiet_option("No request log.")
@verbose_option
@_handle_errors
def serve_command(model, host, port, model_name, max_batch, max_body, max_pixels, drain_timeout, unsafe, quiet):
    """Serve MODEL over TensorFlow Serving's REST API until Ctrl-C or SIGTERM (pip install 'transfer[serve]').

    MODEL is anything `transfer predict` takes. POST {"instances": [{"b64": "..."}]} to
    /v1/models/NAME:predict; the answer is {"predictions": [{"probabilities", "classes",
    "scores"}]}. Requests are logged to stderr.

    \b
    Example:
      transfer serve models/my-run/ --port 8501
      curl -d '{"instances": [{"b64": "'$(base64 -w0 cat.jpg)'"}]}' \\
        http://127.0.0.1:8501/v1/models/my-run:predict
    """
    _start(quiet)
    from transfer.serve import make_server

    with contextlib.redirect_stdout(sys.stderr):
        server = make_server(model, host=host, port=port, name=model_name, max_batch=max_batch, max_body=max_body,
                             unsafe=unsafe, max_pixels=max_pixels, drain_timeout=drain_timeout)
    click.echo(f"serving {server.url} (version {server.model.version}); Ctrl-C stops, after the requests in flight",
               err=True)
    server.run()
    click.echo("stopped", err=True)


@main.command("explain")
@model_argument
@click.argument("inputs", nargs=-1, required=True)
@click.option("--class", "target", default=None, help="Explain this class [default: each image's predicted class].")
@click.option("--layer", default=None, help="Feature map to weigh [default: the last one larger than 1x1].")
@output_option("Folder for the PNGs [default: ./explain-<run name>]; new, empty or made by transfer (no file is "
               "ever replaced).")
@max_pixels_option()
@json_option()
@model_options
@_handle_errors
def explain_command(model, inputs, target, layer, output, max_pixels, as_json, unsafe, quiet):
    """Grad-CAM heat maps: where in each image the model looks (one PNG per image and a contact sheet).

    MODEL is a run folder or a .keras file; INPUTS are files, folders or globs, decoded
    as `predict` does. Exit status is 1 if any input could not be read.

    \b
    Example:
      transfer explain models/my-run/ cat.jpg dog.jpg --output explained/
    """
    _start(quiet)
    from transfer.reports.explain import explain

    with contextlib.redirect_stdout(sys.stderr):
        result = explain(model, list(inputs), target=target, layer=layer, output=output, max_pixels=max_pixels,
                         unsafe=unsafe)
    if as_json:
        click.echo(json_text(console.explanations_json(result)))
    else:
        _echo(console.explanations(result))
        _echo_failures(result.failures)
    if result.failures:
        sys.exit(1)


@main.command("visualize")
@model_argument
@click.option("--layer", "layers", multiple=True, help="Layer whose activation maps --image shows (repeatable) "
              "[default: a few evenly spaced convolutional layers].")
@click.option("--image", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Show the activation maps of the layers on this image.")
@output_option("Folder for the PNGs [default: ./visualize-<run name>]; new, empty or made by transfer (no file is "
               "ever replaced).")
@json_option()
@model_options
@_handle_errors
def visualize_command(model, layers, image, output, as_json, unsafe, quiet):
    """The first convolutional layer's filters as an image grid; with --image, activation maps.

    \b
    Examples:
      transfer visualize models/my-run/
      transfer visualize models/my-run/ --image cat.jpg --layer block3_conv
    """
    _start(quiet)
    from transfer.reports.visualize import visualize

    with contextlib.redirect_stdout(sys.stderr):
        result = visualize(model, list(layers), image=image, output=output, unsafe=unsafe)
    click.echo(json_text(result.to_dict()) if as_json else console.visualization(result))


if __name__ == "__main__":
    main()
