#!/usr/bin/env python
"""Legacy-compatible: drain one phase of a run.

    PYTHONPATH=src DATABASE_URL=... python scripts/drain_one_phase.py --run-id R --phase-id P \\
        [--api-url URL] [--force] [--telemetry]

Same as ``autopack drain phase``: the executor uses --api-url / AUTOPACK_API_URL only after
checking that server's database identity, or starts its own server on DATABASE_URL's database.
Exit 0 when the phase is COMPLETE, 1 when it failed, 2 on a config/identity error, 3 on a
schema error.
"""

import sys

from autopack.cli import main

if __name__ == "__main__":
    sys.exit(main(["drain", "phase", *sys.argv[1:]]))
