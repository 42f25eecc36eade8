"""The control plane's rules: every operation on runs, phases, leases and approvals.

Each operation is written once, here, as a function taking the
:class:`~autopack.db.Database` and a request of :mod:`autopack.contract`, running one
transaction and answering with a contract model. The API routes call these functions
and nothing else; the CLI and the executors reach them through the API.

    claims.py       lease the next claimable phase (FOR UPDATE SKIP LOCKED; reclaim first)
    leases.py       the fencing check, heartbeats, usage reports, reclaiming expired leases
    results.py      an attempt's result, applied once under its lease (idempotency keys)
    approvals.py    park a phase for a human; approve, reject, expire
    runs.py         create, read, list, cancel runs; read and requeue a phase
    lifecycle.py    lookups, budgets, tier states, cascades, the end of a run
    maintenance.py  the API's background pass
    telemetry.py    LLM usage, estimation and escalation rows: the writer and the readers
    views.py        typed records to contract answers

The statements they run are named in :mod:`autopack.db.statements`; the concurrency rules
(lock order, fencing, idempotency) are written down next to the code that keeps them.
"""
