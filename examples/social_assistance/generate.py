"""Generate the synthetic social-assistance city (see README.md beside this file).

    python examples/social_assistance/generate.py --out data/social_assistance --seed 7

The default output directory is where ``nodes/<dept>/node.toml`` look for it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fedgov.errors import FedgovError
from fedgov.scenarios.social_assistance import generate

REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, generate, print the summary as JSON; exit status 0 on success."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "data" / "social_assistance",
        help="output directory (default: <repo>/data/social_assistance)",
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--households", type=int, default=6000, help="number of households (default 6000)")
    args = parser.parse_args(argv)
    if args.households < 50:
        parser.error("--households must be at least 50")
    try:
        summary = generate(args.out, seed=args.seed, households=args.households)
    except (FedgovError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2, sort_keys=True))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
