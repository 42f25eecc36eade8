"""Token estimation: features → p50/p90 → ``max_tokens``, and the tools that keep it honest.

Pure library code (no HTTP, no database sessions, no environment). Import from the
modules: ``features`` (what a phase asks for), ``estimator`` (coefficients as data),
``metrics`` (per-event measures), ``report``, ``calibrate`` and ``plot`` (matplotlib,
imported only by the commands that draw).
"""
