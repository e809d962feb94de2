"""Plots and report.html: PNGs that are not blank, tick labels that never overlap, and the report rendered in
headless Chromium from a real run whose class folders are named like HTML injections."""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from conftest import make_dataset
from transfer.reports import report as html_report
from transfer.reports.plots import confusion_figure, plot_confusion, plot_top_losses

#: folder names that run script if a page puts them in its HTML unescaped ('/' cannot be in a folder name)
EVIL = {"<img src=x onerror=\"document.title='XSS'\">": (220, 30, 30), "<script>document.title='XSS2'": (20, 40, 220)}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian package chromium)")


def not_blank(png) -> bool:
    pixels = np.asarray(Image.open(png if isinstance(png, str) else io.BytesIO(png)).convert("RGB"), np.float64)
    return pixels.var() > 0


def tick_boxes(ax, axis, renderer):
    labels = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    return [(t.get_text(), t.get_window_extent(renderer)) for t in labels if t.get_visible() and t.get_text()]


@pytest.mark.parametrize("n", [2, 60, 150])
def test_confusion_matrix_names_classes_without_overlapping_labels(n, tmp_path):
    labels = [f"class-{i:03d}-with-a-long-name" for i in range(n)]
    rng = np.random.default_rng(n)
    matrix = rng.integers(0, 20, (n, n)) + np.diag(rng.integers(20, 60, n))
    fig = confusion_figure(matrix, labels)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    figure_box = fig.bbox
    for ax, axis in itertools.product(fig.axes[:2], "xy"):
        boxes = tick_boxes(ax, axis, renderer)
        if n <= 60 and (axis == "x" or ax is fig.axes[0]):
            assert [text for text, _ in boxes] == [label[:23] + "\u2026" for label in labels]  # every class named
        for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
            assert not box_a.overlaps(box_b), f"tick labels {a!r} and {b!r} overlap ({n} classes)"
        assert all(figure_box.contains(box.x0, box.y0) and figure_box.contains(box.x1, box.y1) for _, box in boxes)
    plot_confusion(matrix, labels, str(tmp_path / "cm.png"))
    assert not_blank(str(tmp_path / "cm.png"))


def test_top_losses_grid_is_drawn(tmp_path):
    paths = make_dataset(tmp_path / "d", per_class=1)
    rows = [{"path": os.path.join(paths, c, "000.png"), "true": c, "predicted": "red", "probability": 0.5,
             "loss": 1.0} for c in ("blue", "green", "red")]
    plot_top_losses(rows, str(tmp_path / "top.png"))
    image = Image.open(tmp_path / "top.png")
    assert image.width > image.height and not_blank(str(tmp_path / "top.png"))


def test_text_that_is_not_utf8_still_renders():
    page = html_report.render(html_report.Report("t", facts=[("data", "/photos/caf\udce9")]))
    assert "/photos/caf\\udce9" in page
    page.encode("utf-8")


def test_gradcam_section_only_when_given():
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(png, format="PNG")
    empty = html_report.render(html_report.Report("t"))
    shown = html_report.render(html_report.Report("t", gradcam=[("cat <b>1</b>", png.getvalue())]))
    assert "Grad-CAM" not in empty
    assert "Grad-CAM" in shown and "cat &lt;b&gt;1&lt;/b&gt;" in shown and "data:image/png;base64," in shown


@pytest.fixture(scope="module")
def evil_run(tmp_path_factory):
    """A scratch net trained through the CLI on two classes whose folder names are HTML."""
    from click.testing import CliRunner

    from cli import main

    root = tmp_path_factory.mktemp("evil")
    data = make_dataset(root / "data", per_class=8, colours=EVIL)
    result = CliRunner().invoke(main, [
        "train", data, "--backbone", "smallcnn", "--image-size", "32", "--epochs", "2", "--fine-tune-epochs", "0",
        "--augment", "none", "--batch-size", "8", "-o", str(root / "models"), "--name", "evil", "--quiet"])
    assert result.exit_code == 0, result.output
    return str(root / "models" / "evil")


def test_a_run_ends_with_metrics_confusion_matrix_and_report(evil_run):
    metrics = json.load(open(os.path.join(evil_run, "metrics.json")))
    val = metrics["val"]
    assert set(val["per_class"]) == set(EVIL) and sum(map(sum, val["confusion_matrix"])) == val["images"]
    assert val["accuracy"] == pytest.approx(np.trace(val["confusion_matrix"]) / val["images"])
    assert not_blank(os.path.join(evil_run, "confusion_matrix.png"))
    text = open(os.path.join(evil_run, "report.html"), encoding="utf-8").read()
    assert "<script" not in text and "<img src=x" not in text and "&lt;img src=x onerror=" in text
    assert "src=\"http" not in text and "href=" not in text  # self-contained: nothing to fetch
    assert text.count('<img class="plot" alt="') >= 2 and "Grad-CAM examples" in text  # the worst errors' maps


def chromium(*args, cwd):
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@needs_chromium
def test_report_in_headless_chromium_shows_names_as_text_and_runs_nothing(evil_run, tmp_path):
    page = "file://" + os.path.join(evil_run, "report.html")
    accuracy = json.load(open(os.path.join(evil_run, "metrics.json")))["val"]["accuracy"]
    dom = chromium("--dump-dom", page, cwd=tmp_path).stdout
    assert re.search(r"<title>(.*?)</title>", dom).group(1) == "Run evil"  # an injected script would change it
    assert 'src="x"' not in dom and "<script" not in dom  # no element was made from a class name
    for name in EVIL:
        assert name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in dom
    assert f"{accuracy:.4f}" in dom
    shot = tmp_path / "report.png"
    chromium(f"--screenshot={shot}", "--window-size=1280,2000", page, cwd=tmp_path)
    assert not_blank(str(shot))
