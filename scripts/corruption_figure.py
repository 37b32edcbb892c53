"""Draw every corruption at severities 1, 3, 5 on a sample photo: ``python scripts/corruption_figure.py [PATH]``.

A thin wrapper around ``vision.corruptions.figure.save_corruption_grid``; writes docs/corruptions.png
by default.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default="docs/corruptions.png")
    parser.add_argument("--image", default="astronaut", help="a scikit-image sample photo")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from vision.corruptions.figure import save_corruption_grid

    print(save_corruption_grid(args.path, image=args.image, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
