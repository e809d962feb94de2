"""CLI start-up: wall time of `transfer --help` (TensorFlow is not imported), against a bare `python -c pass`.

    python benchmarks/bench_cli.py --repeats 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

from _common import timed


def median_seconds(command: list[str], repeats: int) -> float:
    subprocess.run(command, capture_output=True, check=True)  # warm the file cache
    return statistics.median(timed(subprocess.run, command, capture_output=True, check=True)[1]
                             for _ in range(repeats))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()
    transfer = os.path.join(os.path.dirname(sys.executable), "transfer")
    cli = median_seconds([transfer, "--help"], args.repeats)
    bare = median_seconds([sys.executable, "-c", "pass"], args.repeats)
    print(f"bench_cli: transfer --help {cli:.3f} s median of {args.repeats} (python -c pass {bare:.3f} s; "
          f"x{cli / bare:.1f})")


if __name__ == "__main__":
    main()
