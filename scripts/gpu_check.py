"""The prepared GPU check (issue 7): ``python scripts/gpu_check.py OUT_DIR [--dry-run] [--device cuda:0]``.

A thin wrapper around ``vision.bench_gpu.bench_gpu``: prints the tables and writes
``OUT_DIR/gpu_check.json``. Finishes in under 8 minutes on one GPU; ``--dry-run`` runs tiny sizes
on the CPU in seconds. Exits with status 2 and a one-line message when the GPU is missing.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder for gpu_check.json")
    parser.add_argument("--device", default=None, help="cuda (default), cuda:N, or cpu (default with --dry-run)")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, for checking the script itself")
    parser.add_argument("--dtype", default="bfloat16", help="activation dtype of the norm kernels")
    parser.add_argument("--vit-batch", type=int, default=128)
    parser.add_argument("--dit-batch", type=int, default=32)
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip parts that would start after this")
    args = parser.parse_args(argv)

    from vision.bench_gpu import GPUUnavailableError, bench_gpu

    try:
        bench_gpu(args.out, device=args.device, dry_run=args.dry_run, dtype=args.dtype, vit_batch=args.vit_batch,
                  dit_batch=args.dit_batch, budget_s=args.budget_s)
    except GPUUnavailableError as exc:
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
