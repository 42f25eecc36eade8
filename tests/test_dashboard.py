"""The operator's views: the HTML dashboard, Prometheus metrics and the telemetry summary."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from autopack.client import ApiClient
from autopack.contract import ClaimIn
from autopack.rundef import parse_run_definition
from tests.support import Server, clean_env
from tests.test_telemetry_writers import ESTIMATION, USAGE

RUN = {
    "run_id": "r1",
    "tiers": [
        {
            "tier_id": "T1",
            "name": "t",
            "phases": [
                {"phase_id": "p1", "name": "first", "scope": {"deliverables": ["pkg/a.py"]}},
                {"phase_id": "p2", "name": "second", "scope": {"deliverables": ["pkg/b.py"]}},
            ],
        }
    ],
}


def test_dashboard_metrics_and_summary_show_the_same_database(
    database_url: str, tmp_path: Path
) -> None:
    with (
        Server(clean_env(DATABASE_URL=database_url), cwd=tmp_path) as server,
        ApiClient(server.url) as client,
    ):
        instance = server.wait_healthy()["database"]["instance_id"]
        client.create_run(parse_run_definition(RUN))
        claimed = client.claim(ClaimIn(worker_id="worker-a", lease_seconds=60, run_id="r1"))
        assert claimed is not None
        client.post_telemetry(USAGE)
        # a model without a price: the run's cost cell said $0.0123 alone
        unpriced = {"cost_usd": None, "output_tokens": 0, "idempotency_key": "u2"}
        client.post_telemetry(USAGE.model_copy(update=unpriced))
        client.post_telemetry(ESTIMATION)

        page = httpx.get(f"{server.url}/ui", timeout=10)
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
        summary = client.request("GET", "/telemetry/summary", params={"run_id": "r1"}).json()

    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # A server without tokens needs no login: framed by another site, its approve button
    # could be clicked through an overlay (clickjacking); and no script may run.
    assert page.headers["x-frame-options"] == "DENY"
    policy = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy
    html = page.text
    assert instance in html and "r1" in html and "worker-a" in html
    assert 'class="EXECUTING"' in html and 'class="QUEUED"' in html
    assert "+ 1 unpriced call(s)" in html
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
    }
    assert samples["autopack_phases", _labels(run_id="r1", state="EXECUTING")] == 1
    assert samples["autopack_phases", _labels(run_id="r1", state="QUEUED")] == 1
    output = _labels(run_id="r1", model="claude-x", role="builder", type="output")
    assert samples["autopack_llm_tokens_total", output] == 800
    assert summary["usage"][0]["output_tokens"] == 800
    assert summary["estimation"]["overall"]["n"] == 1


def _labels(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def test_metrics_count_every_run_past_the_page_of_newest_ones(tmp_path: Path) -> None:
    """autopack_runs was counted over the newest 1000 runs only: 1001 queued runs were 1000."""
    from autopack.bounds import MAX_PAGE
    from autopack.control import runs
    from autopack.db import open_database
    from autopack.dburl import resolve_database_url

    url = f"sqlite:///{tmp_path / 'autopack.db'}"
    database = open_database(resolve_database_url(url), role="test", log=False, create=True)
    try:
        for n in range(MAX_PAGE + 1):
            runs.create_run(database, parse_run_definition({**RUN, "run_id": f"r{n}"}))
    finally:
        database.close()
    with Server(clean_env(DATABASE_URL=url), cwd=tmp_path) as server:
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
    }
    assert samples["autopack_runs", _labels(state="QUEUED")] == MAX_PAGE + 1
