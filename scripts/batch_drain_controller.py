#!/usr/bin/env python
"""Legacy-compatible: drain a batch of a run's queued phases.

    PYTHONPATH=src DATABASE_URL=... python scripts/batch_drain_controller.py --run-id R \\
        --batch-size 10 [--api-url URL] [--concurrency K]

Same as ``autopack drain run --max-claims BATCH_SIZE``: at most BATCH_SIZE attempts, K at a
time. Exit 0 when no phase failed, 1 otherwise, 2/3 on config/identity/schema errors.
Other ``autopack drain run`` options are passed through.
"""

import argparse
import sys

from autopack.cli import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    args, rest = parser.parse_known_args()
    sys.exit(
        main(["drain", "run", "--run-id", args.run_id, "--max-claims", str(args.batch_size), *rest])
    )
