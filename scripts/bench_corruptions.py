"""Corruption throughput, batched vs the NumPy reference: ``python scripts/bench_corruptions.py [--out FILE]``.

A thin wrapper around ``vision.corruptions.bench.bench_corruptions``: prints a markdown table of
corrupted images per second for the 15 ImageNet-C corruptions at 224 px (all severities), batched
torch ops against the per-image reference in tests/corruption_reference.py, and the ratio; writes
JSON with ``--out``. About a minute on two CPU cores with the defaults.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="images per batched call")
    parser.add_argument("--size", type=int, default=224, help="image side; 224 uses the ImageNet-C table")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--reference-images", type=int, default=2, help="single images timed through the reference")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; 1 matches the single-threaded reference, and on a shared machine "
                             "a pool as large as the core count stalls on busy cores (0: torch's default)")
    parser.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = parser.parse_args(argv)

    from vision.corruptions.bench import bench_corruptions

    bench_corruptions(batch=args.batch, size=args.size, device=args.device, rounds=args.rounds,
                      reference_images=args.reference_images, threads=args.threads or None, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
