"""Command line for the helpers: ``python -m examples.telemetry_utils.cli slugify "Hello"``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from examples.telemetry_utils.string_util import slugify
from examples.telemetry_utils.text_stats import text_stats


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="telemetry-utils")
    commands = parser.add_subparsers(dest="command", required=True)
    slug = commands.add_parser("slugify", help="print the slug of TEXT")
    slug.add_argument("text")
    slug.add_argument("--separator", default="-")
    stats = commands.add_parser("stats", help="print statistics of FILE as JSON")
    stats.add_argument("file", type=Path)
    stats.add_argument("--top", type=int, default=5)
    args = parser.parse_args(argv)

    if args.command == "slugify":
        print(slugify(args.text, separator=args.separator))
        return 0
    try:
        text = args.file.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"error: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(text_stats(text, top=args.top)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
