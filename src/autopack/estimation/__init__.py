"""Token estimation: features → a predictive distribution → ``max_tokens``, and its checks.

Pure library code (no HTTP, no database sessions, no environment). Import from the
modules: ``features`` (what a phase asks for), ``rows`` (telemetry rows in, one
observation per phase out), ``estimator`` (the file the executor loads: ``linear`` for
schema 1, ``predictive`` for schema 2), ``fit``/``solver``/``build`` (the censored
hierarchical fit), ``calibrate`` (fit + time-ordered holdout + verdict), ``evaluate``
(held-out measures), ``render`` (markup-free Rich output), ``report`` and ``metrics``
(recorded accuracy), ``plot`` (matplotlib, imported only by the commands that draw).
"""
