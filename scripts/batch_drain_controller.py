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
    # --help must name the options it passes on, or a user never learns --api-url works.
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Every other `autopack drain run` option is passed on: --api-url URL, "
        "--concurrency K, --workspace DIR, --telemetry, ... (`autopack drain run --help` "
        "lists them). Exit 0 when no phase failed, 1 otherwise, 2/3 on "
        "config/identity/schema errors.",
    )
    parser.add_argument("--run-id", required=True, help="Run whose queued phases to drain.")
    parser.add_argument("--batch-size", type=int, required=True, help="At most this many attempts.")
    args, rest = parser.parse_known_args()
    sys.exit(
        main(["drain", "run", "--run-id", args.run_id, "--max-claims", str(args.batch_size), *rest])
    )
