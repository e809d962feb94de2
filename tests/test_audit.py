"""The bad-input matrix: real-world files, each with its expected outcome and, when used, its exact pixels."""

import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from cli import main
from transfer import data
from transfer.errors import DataError

SIZE = 16


def _solid(path, colour, mode="RGB", size=(SIZE, SIZE), **save):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new(mode, size, colour).save(path, **save)


def _base(root):
    """Two usable classes, 4 PNGs each; every case adds to class ``a``."""
    for c, colour in (("a", (200, 0, 0)), ("b", (0, 0, 200))):
        for i in range(4):
            _solid(os.path.join(root, c, f"ok{i}.png"), tuple(v + i for v in colour))
    return os.path.join(root, "a")


def _png16(path, w, h, channels, value):
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit RGB)."""
    colour_type = {1: 0, 3: 2}[channels]
    row = b"\x00" + struct.pack(f">{w * channels}H", *(list(value) * w))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(row * h)) + chunk(b"IEND", b""))
    open(path, "wb").write(png)


def _bomb(path, side=15000):
    """A 15000x15000 bilevel PNG: a few hundred KB on disk, 675 MB as RGB."""
    compressor = zlib.compressobj(9)
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    open(path, "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                           + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def _exif_rotated(path):
    pixels = np.zeros((SIZE, SIZE * 2, 3), np.uint8)
    pixels[:, :SIZE] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=100)


def _exif_expected():
    expected = np.zeros((SIZE, SIZE, 3), np.uint8)
    expected[: SIZE // 2] = 255  # rotated upright: the white half is on top
    return expected


def _truncated(path):
    _solid(path + ".tmp", (1, 2, 3), size=(64, 64), format="JPEG")
    open(path, "wb").write(open(path + ".tmp", "rb").read()[:200])
    os.remove(path + ".tmp")


def _flipped_idat(path):
    _solid(path, (10, 20, 30), format="PNG")
    raw = bytearray(open(path, "rb").read())
    raw[raw.index(b"IDAT") + 8] ^= 0xFF
    open(path, "wb").write(raw)


def _two_frame_gif(path):
    frames = [Image.new("RGB", (SIZE, SIZE), c).convert("P") for c in ((0, 255, 0), (255, 0, 255))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)


def _palette_transparent(path):
    image = Image.new("P", (SIZE, SIZE), 0)
    image.putpalette([200, 10, 10] + [0] * 765)
    image.info["transparency"] = 0
    image.save(path)


def _symlink_in(a):
    os.symlink(os.path.join(a, "ok0.png"), os.path.join(a, "link.png"))
    return os.path.join(a, "link.png")


def _symlink_out(a):
    outside = os.path.join(os.path.dirname(os.path.dirname(a)), "outside.png")
    _solid(outside, (9, 9, 9))
    os.symlink(outside, os.path.join(a, "escape.png"))
    return os.path.join(a, "escape.png")


def _non_utf8(a):
    path = os.path.join(os.fsencode(a), b"caf\xe9.png")
    Image.new("RGB", (SIZE, SIZE), (1, 1, 1)).save(open(path, "wb"), format="PNG")
    return os.fsdecode(path)


def _uniform(colour):
    return np.full((SIZE, SIZE, 3), colour, np.uint8)


# name -> (make(a_folder) -> path or None, expected status, reason fragment or expected pixels, tolerance)
CASES = {
    "truncated_jpeg": (lambda a: _truncated(os.path.join(a, "t.jpg")), "skipped", "corrupt or truncated"),
    "zero_byte_jpeg": (lambda a: open(os.path.join(a, "z.jpg"), "wb").close(), "skipped", "empty file"),
    "text_named_jpg": (lambda a: open(os.path.join(a, "x.jpg"), "w").write("hello"), "skipped", "not an image"),
    "idat_byte_flipped": (lambda a: _flipped_idat(os.path.join(a, "f.png")), "skipped", "corrupt or truncated"),
    "decompression_bomb": (lambda a: _bomb(os.path.join(a, "bomb.png")), "skipped", "too large: 225000000 pixels"),
    "broken_symlink": (lambda a: os.symlink("/nonexistent/x.png", os.path.join(a, "broken.png")), "skipped",
                       "broken symlink"),
    "symlink_out_of_root": (_symlink_out, "skipped", "outside the dataset folder"),
    "non_utf8_name": (_non_utf8, "skipped", "not valid UTF-8"),
    "png_named_jpg": (lambda a: _solid(os.path.join(a, "p.jpg"), (0, 128, 255), format="PNG"), "ok",
                      _uniform((0, 128, 255)), 0),
    "uppercase_ext": (lambda a: _solid(os.path.join(a, "UP.PNG"), (7, 8, 9)), "ok", _uniform((7, 8, 9)), 0),
    "no_extension": (lambda a: _solid(os.path.join(a, "noext"), (5, 6, 7), format="PNG"), "ok",
                     _uniform((5, 6, 7)), 0),
    "tiff": (lambda a: _solid(os.path.join(a, "t.tif"), (30, 60, 90)), "ok", _uniform((30, 60, 90)), 0),
    "webp": (lambda a: _solid(os.path.join(a, "w.webp"), (3, 100, 200), lossless=True), "ok",
             _uniform((3, 100, 200)), 0),
    "cmyk_jpeg": (lambda a: _solid(os.path.join(a, "c.jpg"), (0, 255, 255, 0), mode="CMYK", quality=100), "ok",
                  _uniform((255, 0, 0)), 2),
    "gray16_png": (lambda a: _png16(os.path.join(a, "g16.png"), SIZE, SIZE, 1, [40000]), "ok",
                   _uniform((156, 156, 156)), 0),
    "rgb16_png": (lambda a: _png16(os.path.join(a, "c16.png"), SIZE, SIZE, 3, [65535, 32768, 0]), "ok",
                  _uniform((255, 128, 0)), 0),
    "palette_transparent": (lambda a: _palette_transparent(os.path.join(a, "pt.png")), "ok",
                            _uniform((255, 255, 255)), 0),
    "rgba_alpha0": (lambda a: _solid(os.path.join(a, "ra.png"), (255, 0, 0, 0), mode="RGBA"), "ok",
                    _uniform((255, 255, 255)), 0),
    "la": (lambda a: _solid(os.path.join(a, "la.png"), (100, 255), mode="LA"), "ok", _uniform((100, 100, 100)), 0),
    "grayscale": (lambda a: _solid(os.path.join(a, "l.png"), 77, mode="L"), "ok", _uniform((77, 77, 77)), 0),
    "two_frame_gif": (lambda a: _two_frame_gif(os.path.join(a, "anim.gif")), "ok", _uniform((0, 255, 0)), 0),
    "exif_orientation_6": (lambda a: _exif_rotated(os.path.join(a, "r.jpg")), "ok", _exif_expected(), 48),
    "unicode_name": (lambda a: _solid(os.path.join(a, "猫 café.png"), (1, 200, 3)), "ok", _uniform((1, 200, 3)), 0),
    "symlink_inside_root": (_symlink_in, "ok", _uniform((200, 0, 0)), 0),
    "nested_subfolder": (lambda a: _solid(os.path.join(a, "deep", "er", "n.png"), (4, 4, 4)), "ok",
                         _uniform((4, 4, 4)), 0),
    "appledouble": (lambda a: open(os.path.join(a, "._ok0.png"), "wb").write(b"\x00\x05\x16\x07junk"), "absent", ""),
    "ds_store": (lambda a: open(os.path.join(a, ".DS_Store"), "wb").write(b"\x00\x00\x00\x01Bud1"), "absent", ""),
    "hidden_image": (lambda a: _solid(os.path.join(a, ".hidden.png"), (1, 1, 1)), "absent", ""),
    "text_file": (lambda a: open(os.path.join(a, "notes.txt"), "w").write("labels by Ann"), "ignored", ""),
}


def _path_of(made, a, before):
    if isinstance(made, str):
        return made
    new = [os.path.join(d, f) for d, _, fs in os.walk(a) for f in fs]
    return (sorted(set(new) - before) or [None])[0]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_matrix(tmp_path, case):
    make, status, expected, *tolerance = CASES[case]
    root = str(tmp_path / "d")
    a = _base(root)
    before = {os.path.join(d, f) for d, _, fs in os.walk(a) for f in fs}
    path = _path_of(make(a), a, before)
    ds = data.scan(root, cache_dir=str(tmp_path / "cache"))
    checks = {c.path: c for c in ds.report.checks}
    used = {e.path for examples in ds.splits.values() for e in examples}
    if status == "absent":
        assert path not in checks and path not in used
        assert sum(len(v) for v in ds.splits.values()) == 8
        assert ds.report.junk == 1 and not ds.report.skipped
        return
    assert checks[path].status == status, checks[path]
    if status == "skipped":
        assert expected in checks[path].reason and path not in used
    elif status == "ignored":
        assert path not in used and ds.report.ignored == 1 and not ds.report.skipped
    else:
        assert path in used
        pixels = _training_pixels(ds, path)
        np.testing.assert_array_equal(pixels, _prediction_pixels(path))
        assert np.abs(pixels.astype(int) - expected.astype(int)).max() <= tolerance[0]


def _training_pixels(ds, path):
    """The pixels the training pipeline feeds the model for ``path``."""
    examples = [e for examples in ds.splits.values() for e in examples if e.path == path]
    batch, _ = next(iter(data.make_tf_dataset(examples, SIZE, 1)))
    return batch.numpy()[0].astype(np.uint8)


def _prediction_pixels(path):
    """The pixels `transfer predict` feeds a model for ``path`` (the model here records its input)."""
    from transfer.prediction import predict
    from transfer.runners import LoadedModel

    seen = []

    def record(batch):
        seen.append(batch)
        return np.ones((len(batch), 2), np.float32) / 2

    model = LoadedModel("test", "keras", ["a", "b"], (SIZE, SIZE), "squash", record)
    result = predict(model, [path])
    assert not result.failures, result.failures
    return seen[0][0].astype(np.uint8)


def test_animated_image_is_noted_and_bomb_decodes_nothing(tmp_path):
    root = str(tmp_path / "d")
    a = _base(root)
    _two_frame_gif(os.path.join(a, "anim.gif"))
    ds = data.scan(root)
    assert [c.note for c in ds.report.used if c.note] == ["animated (2 frames): the first frame is used"]


def test_bomb_is_refused_with_little_memory(tmp_path):
    _bomb(str(tmp_path / "bomb.png"))
    code = ("import resource, sys\n"
            "from transfer.data.audit import check_file\n"
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "check = check_file(sys.argv[1], sys.argv[2])\n"
            "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base\n"
            "print(check.status, grown)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "bomb.png"), str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    status, grown_kb = out.stdout.split()
    assert status == "skipped"
    assert int(grown_kb) < 50_000, f"refusing the bomb grew memory by {grown_kb} KB"


@pytest.mark.parametrize("build, message", [
    (lambda r: _solid(os.path.join(r, "only", "x.png"), (1, 1, 1)), "at least 2 class folders"),
    (lambda r: (_base(r), os.makedirs(os.path.join(r, "empty"))), "d/empty' has no images"),
    (lambda r: (_base(r), os.makedirs(os.path.join(r, "broken")),
                open(os.path.join(r, "broken", "x.jpg"), "w").write("no")), "no usable images"),
    (lambda r: [_solid(os.path.join(r, c, f"{i}.png"), (i, i, i)) for c, n in (("a", 2), ("b", 1)) for i in range(n)],
     "'b' has 1 image"),
])
def test_structure_errors_name_the_folder(tmp_path, build, message):
    root = str(tmp_path / "d")
    build(root)
    with pytest.raises(DataError, match=message):
        data.scan(root)


def test_top_level_images_are_reported_and_not_used(tmp_path):
    root = str(tmp_path / "d")
    _base(root)
    _solid(os.path.join(root, "stray.png"), (1, 1, 1))
    ds = data.scan(root)
    assert ds.report.unused == [os.path.join(root, "stray.png")]
    assert sum(len(v) for v in ds.splits.values()) == 8


def test_95_5_split_gets_class_weights_and_a_rare_validation_image(tmp_path):
    root = str(tmp_path / "d")
    for i in range(95):
        _solid(os.path.join(root, "common", f"{i}.png"), (i, 0, 0))
    for i in range(5):
        _solid(os.path.join(root, "rare", f"{i}.png"), (0, 0, i))
    ds = data.scan(root, val_split=0.1)
    assert ds.counts()["val"]["rare"] >= 1
    weights = data.class_weights(ds, "auto")
    assert weights[1] > 5 * weights[0]
    assert data.class_weights(ds, "none") is None


def test_duplicates_across_splits_are_leakage_and_dedupe_drops_them(tmp_path):
    root = str(tmp_path / "d")
    for split, n in (("train", 3), ("val", 2)):
        for c in ("a", "b"):
            for i in range(n):
                _solid(os.path.join(root, split, c, f"{i}.png"), (ord(c), i, 7 if split == "train" else 9))
    _solid(os.path.join(root, "val", "a", "copy.png"), (ord("a"), 0, 7))  # same bytes as train/a/0.png
    ds = data.scan(root)
    assert ds.report.leaks == [[os.path.join(root, "train", "a", "0.png"), os.path.join(root, "val", "a", "copy.png")]]
    deduped = data.scan(root, dedupe=True)
    assert deduped.report.dropped == [os.path.join(root, "val", "a", "copy.png")]
    assert len(deduped.splits["val"]) == 4 and not deduped.report.leaks


def test_audit_cache_makes_rescans_skip_decoding_and_notices_changes(tmp_path, monkeypatch):
    from transfer.data import audit

    root = str(tmp_path / "d")
    _base(root)
    data.scan(root, cache_dir=str(tmp_path / "cache"))
    calls = []
    real = audit.open_rgb
    monkeypatch.setattr(audit, "open_rgb", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    data.scan(root, cache_dir=str(tmp_path / "cache"))
    assert calls == []
    changed = os.path.join(root, "a", "ok1.png")
    open(changed, "wb").write(b"now broken")
    ds = data.scan(root, cache_dir=str(tmp_path / "cache"))
    assert calls == [changed]
    assert [c.reason for c in ds.report.skipped] == ["not an image, or a format Pillow cannot read"]


def test_skip_policy(tmp_path):
    root = str(tmp_path / "d")
    a = _base(root)
    open(os.path.join(a, "bad.jpg"), "w").write("no")
    ds = data.scan(root)
    data.check_skips(ds, strict=False, max_skip_fraction=0.2)  # 1 of 9: fine
    with pytest.raises(DataError, match="--strict: 1 file"):
        data.check_skips(ds, strict=True, max_skip_fraction=0.2)
    with pytest.raises(DataError, match=r"1 of 9 image files \(11%\).*--max-skip-fraction 0.1"):
        data.check_skips(ds, strict=False, max_skip_fraction=0.1)


@pytest.mark.slow
def test_training_on_a_messy_folder_reports_every_skipped_file(tmp_path, runner):
    root = str(tmp_path / "messy")
    a = _base(root)
    for i in range(8):  # enough good images that the skips stay under --max-skip-fraction
        _solid(os.path.join(root, "b", f"more{i}.png"), (0, 0, 100 + i))
        _solid(os.path.join(a, f"more{i}.png"), (100 + i, 0, 0))
    skipped = {}
    for case in ("truncated_jpeg", "zero_byte_jpeg", "text_named_jpg", "broken_symlink", "non_utf8_name"):
        before = {os.path.join(d, f) for d, _, fs in os.walk(a) for f in fs}
        skipped[case] = _path_of(CASES[case][0](a), a, before)
    for case in ("cmyk_jpeg", "two_frame_gif", "rgba_alpha0", "appledouble", "text_file", "gray16_png"):
        CASES[case][0](a)
    os.makedirs(os.path.join(root, "__MACOSX", "a"))
    _solid(os.path.join(root, "__MACOSX", "a", "x.png"), (1, 1, 1))
    result = runner.invoke(main, ["train", root, "--backbone", "lenet5", "--epochs", "1", "--name", "messy",
                                  "-o", str(tmp_path / "models"), "--max-skip-fraction", "0.3", "--json"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "models" / "messy"
    rows = (run / "skipped.csv").read_text(encoding="utf-8").splitlines()[1:]
    assert len(rows) == 5
    assert any(row.startswith("\"'a/caf\\udce9.png'\"") or "caf\\udce9" in row for row in rows)
    for case, path in skipped.items():
        assert f"skipped {data.display_path(path, root)}" in result.stderr, case
    record = json.loads((run / "config.json").read_text())
    assert record["data"]["audit"]["skipped"] == 5 and record["model"]["labels"] == ["a", "b"]

    strict = runner.invoke(main, ["train", root, "--backbone", "lenet5", "--strict", "-o", str(tmp_path / "m2")])
    assert strict.exit_code == 1 and "--strict: 5 file(s)" in strict.output


def test_inspect_json(tmp_path, runner):
    root = str(tmp_path / "d")
    a = _base(root)
    open(os.path.join(a, "bad.jpg"), "w").write("no")
    result = runner.invoke(main, ["inspect", root, "--json", "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["classes"] == ["a", "b"] and report["images"] == 8
    assert report["skipped"] == [{"path": os.path.join("a", "bad.jpg"), "reason": "not an image, or a format Pillow "
                                                                                  "cannot read"}]
    assert report["formats"] == {"PNG": 8} and report["sizes"]["max"] == [SIZE, SIZE]
    table = runner.invoke(main, ["inspect", root, "--cache-dir", str(tmp_path / "c")])
    assert "skipped a/bad.jpg: not an image" in table.stdout


def test_a_class_with_no_usable_image_among_many_is_one_short_error(tmp_path):
    """Hundreds of unusable files give a message of a few reasons and a count, not one reason per file."""
    outside = tmp_path / "outside"
    for cls in ("a", "b"):
        os.makedirs(tmp_path / "data" / cls)
    os.makedirs(outside)
    for i in range(200):
        _solid(str(outside / f"{i}.png"), (i, 0, 0))
        os.symlink(outside / f"{i}.png", tmp_path / "data" / "a" / f"{i}.png")
        _solid(str(tmp_path / "data" / "b" / f"{i}.png"), (0, i, 0))
    with pytest.raises(DataError) as error:
        data.scan(str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    message = str(error.value)
    assert "has no usable images (200 files: symlink to" in message and "; and 197 more); add images" in message
    assert len(message) < 600
