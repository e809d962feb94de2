"""A screenshot of a report.html (a run folder's or an evaluation's) in headless Chromium, for docs/reports.md.

    python benchmarks/report_screenshot.py models/lite0-cvd/evaluations/validation docs/report.png

The page is rendered 1280 pixels wide and ``--height`` tall, then scaled down
with Pillow and saved as an optimised PNG (under 300 KB for docs/reports.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile

from PIL import Image


def screenshot(page: str, png: str, width: int = 1280, height: int = 2400, scale: float = 0.5) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("Chromium is not installed (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "page.png")
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--screenshot={raw}", f"--window-size={width},{height}", "file://" + os.path.abspath(page)],
                       cwd=tmp, check=True, capture_output=True, timeout=120)
        image = Image.open(raw).convert("RGB")
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(png, optimize=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", help="a run folder or an evaluation folder (holding report.html), or the page itself")
    p.add_argument("png")
    p.add_argument("--height", type=int, default=2400, help="page height to capture, in pixels (%(default)s)")
    p.add_argument("--scale", type=float, default=0.5, help="downscale factor (%(default)s)")
    args = p.parse_args()
    page = os.path.join(args.folder, "report.html") if os.path.isdir(args.folder) else args.folder
    screenshot(page, args.png, height=args.height, scale=args.scale)
    print(f"{args.png}: {os.path.getsize(args.png) // 1024} KB")


if __name__ == "__main__":
    main()
