"""report.html: one self-contained page about a model on a dataset, for a run folder or an evaluation.

Images are embedded as ``data:`` URIs and the page needs no network and no
JavaScript, so it can be mailed or archived as one file. Every string that
comes from the data (class names, file names, paths, config values) goes
through :func:`html.escape`: a class folder named ``<img src=x onerror=...>``
shows as text and never runs.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
from dataclasses import dataclass, field
from typing import Any

from .. import runs
from ..data.images import thumbnail_array

#: thumbnails in the worst-errors table
THUMBNAIL = 112

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; font-size: .92em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
img.plot { max-width: 100%; border: 1px solid #eee; }
.wrong { color: #b22222; } .note { color: #8a6d00; } .muted { color: #777; }
figure { display: inline-block; margin: .4em; } figcaption { font-size: .85em; max-width: 260px; }
"""


@dataclass
class Report:
    """What a report shows; sections with nothing to show are left out."""

    title: str
    facts: list[tuple[str, str]] = field(default_factory=list)  # (what, value): model, data, date...
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # split -> metrics.classification_metrics
    plots: list[tuple[str, bytes]] = field(default_factory=list)  # (caption, PNG): learning curves, confusion
    config: dict[str, Any] | None = None
    counts: dict[str, dict[str, int]] | None = None  # split -> class -> images
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    worst: list[dict[str, Any]] = field(default_factory=list)  # rows of evaluate.worst_rows, with "path"
    gradcam: list[tuple[str, bytes]] = field(default_factory=list)  # (caption, PNG): Grad-CAM examples, if any
    worst_title: str = "Worst errors: the images with the highest loss"
    worst_words: tuple[str, str] = ("true", "predicted")  # what the two labels of a worst row are (doctor: given...)
    tables: list[tuple[str, list[str], list[list[Any]]]] = field(default_factory=list)  # (title, header, rows)


def write(report: Report, path: str) -> None:
    runs.write_text(path, render(report))


def render(report: Report) -> str:
    """The page as text."""
    sections = [_facts(report.facts), *(_metrics(split, m) for split, m in report.metrics.items()),
                _plots(report.plots), _worst(report.worst, report.worst_title, report.worst_words),
                *(_titled(title, header, rows) for title, header, rows in report.tables),
                _figures("Grad-CAM examples", report.gradcam),
                _dataset(report.counts, report.skipped), _config(report.config)]
    created = _dt.datetime.now().isoformat(timespec="seconds")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{_e(report.title)}</title>\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<style>{STYLE}</style>\n</head>\n'
            f'<body>\n<h1>{_e(report.title)}</h1>\n' + "\n".join(s for s in sections if s)
            + f'\n<p class="muted">Written by transfer on {created}.</p>\n</body>\n</html>\n')


def _e(value: Any) -> str:
    """Text as HTML; a path that is not valid UTF-8 keeps its odd bytes as ``\\udcxx`` escapes."""
    text = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return html.escape(text, quote=True)


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _table(header: list[str] | None, rows: list[list[Any]], numeric: set[int] = frozenset()) -> str:
    """A table of escaped cells (``header``: None for none); columns in ``numeric`` are right-aligned."""
    def cell(tag, i, value):
        return f'<{tag}{" class=num" if i in numeric else ""}>{_e(value)}</{tag}>'

    head = "<tr>" + "".join(cell("th", i, h) for i, h in enumerate(header)) + "</tr>\n" if header else ""
    body = "\n".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table>\n{head}{body}\n</table>"


def _facts(facts: list[tuple[str, str]]) -> str:
    return _table(None, [list(f) for f in facts]) if facts else ""


def _metrics(split: str, m: dict[str, Any]) -> str:
    """Overall numbers, then precision / recall / F1 / support per class and their averages."""
    overall = _table(["images", "accuracy", f"top-{m['top_k']} accuracy", "log loss"],
                     [[m["images"], f"{m['accuracy']:.4f}", f"{m['top_k_accuracy']:.4f}", f"{m['log_loss']:.4f}"]],
                     numeric={0, 1, 2, 3})
    rows = [[label, f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}", r["support"]]
            for label, r in m["per_class"].items()]
    support = sum(r["support"] for r in m["per_class"].values())
    rows += [[f"{name} average", f"{m[name]['precision']:.4f}", f"{m[name]['recall']:.4f}", f"{m[name]['f1']:.4f}",
              support] for name in ("macro", "weighted")]
    per_class = _table(["class", "precision", "recall", "F1", "support"], rows, numeric={1, 2, 3, 4})
    notes = "".join(f'<p class="note">{_e(note)}</p>' for note in m.get("notes", []))
    return f"<h2>Metrics: {_e(split)}</h2>\n{overall}\n{per_class}\n{notes}"


def _plots(plots: list[tuple[str, bytes]]) -> str:
    return "\n".join(f'<h2>{_e(caption)}</h2>\n<img class="plot" alt="{_e(caption)}" src="{data_uri(png)}">'
                     for caption, png in plots)


def _figures(title: str, figures: list[tuple[str, bytes]]) -> str:
    if not figures:
        return ""
    items = "\n".join(f'<figure><img class="plot" alt="{_e(c)}" src="{data_uri(png)}"><figcaption>{_e(c)}'
                      "</figcaption></figure>" for c, png in figures)
    return f"<h2>{_e(title)}</h2>\n{items}"


def _titled(title: str, header: list[str], rows: list[list[Any]]) -> str:
    """A table under its heading; an empty one says so."""
    return f"<h2>{_e(title)}</h2>\n" + (_table(header, rows) if rows else '<p class="muted">None found.</p>')


def _worst(rows: list[dict[str, Any]], title: str, words: tuple[str, str]) -> str:
    """The images with the highest loss, each with its thumbnail, true and predicted class and probabilities."""
    if not rows:
        return ""
    lines = []
    for row in rows:
        wrong = ' class="wrong"' if row["true"] != row["predicted"] else ""
        lines.append(f'<tr><td><img alt="" src="{data_uri(thumbnail_jpeg(row["path"]), "image/jpeg")}"></td>'
                     f'<td>{_e(row["file"])}</td><td>{_e(row["true"])}</td><td{wrong}>{_e(row["predicted"])}</td>'
                     f'<td class=num>{row["probability"]:.3f}</td><td class=num>{row["true_probability"]:.3f}</td>'
                     f'<td class=num>{row["loss"]:.3f}</td></tr>')
    true, predicted = words
    head = "".join(f"<th>{_e(h)}</th>" for h in ("image", "file", true, predicted, f"p({predicted})", f"p({true})",
                                                   "loss"))
    return f"<h2>{_e(title)}</h2>\n<table>\n<tr>{head}</tr>\n" + "\n".join(lines) + "\n</table>"


def thumbnail_jpeg(path: str, size: int = THUMBNAIL) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(thumbnail_array(path, size)).save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def _dataset(counts: dict[str, dict[str, int]] | None, skipped: list[tuple[str, str]]) -> str:
    """Images per class and split, and every file that was skipped with its reason."""
    if not counts:
        return ""
    splits = list(counts)
    classes = list(next(iter(counts.values())))
    rows = [[c, *(counts[s].get(c, 0) for s in splits)] for c in classes]
    rows.append(["total", *(sum(counts[s].values()) for s in splits)])
    text = "<h2>Dataset</h2>\n" + _table(["class", *splits], rows, numeric=set(range(1, len(splits) + 1)))
    text += f"\n<p>{len(skipped)} file(s) skipped.</p>"
    if skipped:
        text += "\n" + _table(["file", "reason"], [list(s) for s in skipped])
    return text


def _config(config: dict[str, Any] | None) -> str:
    if not config:
        return ""
    rows = [[key, value if isinstance(value, str) else json.dumps(value)] for key, value in config.items()]
    return "<h2>Configuration</h2>\n" + _table(["option", "value"], rows)


def png_bytes(path: str) -> bytes | None:
    """A PNG file's bytes for embedding, or None when it is not there (a plot that was not drawn)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
