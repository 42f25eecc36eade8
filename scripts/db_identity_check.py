#!/usr/bin/env python
"""Legacy-compatible: print the identity of the database DATABASE_URL resolves to.

    PYTHONPATH=src DATABASE_URL=... python scripts/db_identity_check.py [--api-url URL] [--json]

With --api-url, also checks that server uses the same database: exit 0 when they match,
2 on mismatch (both identities printed). Same as ``autopack db identity``.
"""

import sys

from autopack.cli import main

if __name__ == "__main__":
    sys.exit(main(["db", "identity", *sys.argv[1:]]))
