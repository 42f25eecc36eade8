#!/usr/bin/env python
"""Legacy-compatible: drain one phase and check that its telemetry rows grew.

    PYTHONPATH=src DATABASE_URL="sqlite:///autopack_telemetry_seed.db" TELEMETRY_DB_ENABLED=1 \\
        python scripts/probe_telemetry_phase.py --run-id telemetry-collection-v4 \\
        --phase-id telemetry-p1-string-util

Same as ``autopack probe``. Exit 0 only when the phase completed and both
token_estimation_v2_events and llm_usage_events grew, with no telemetry write lost.
"""

import sys

from autopack.cli import main

if __name__ == "__main__":
    sys.exit(main(["probe", *sys.argv[1:]]))
