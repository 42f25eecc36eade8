#!/usr/bin/env python
"""Legacy-compatible: create run ``telemetry-collection-v4`` in the database DATABASE_URL names.

    PYTHONPATH=src DATABASE_URL="sqlite:///autopack_telemetry_seed.db" \\
        python scripts/create_telemetry_collection_run.py

One tier ``T1``, ten QUEUED phases ``telemetry-p1-string-util`` … ``telemetry-p10-utils-package``
(the definition shipped in ``autopack/data/runs/``; ``examples/`` holds a copy). The database
always goes through the full schema initialisation. Running it again is harmless: it says
the run exists and exits 0. Same as ``autopack run seed telemetry-collection-v4``.
"""

import sys

from autopack.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "seed", "telemetry-collection-v4", *sys.argv[1:]]))
