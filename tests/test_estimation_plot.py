"""The predicted-vs-actual plot writes a real PNG (no display needed)."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

from autopack.estimation.estimator import TokenEstimator
from autopack.estimation.features import extract_features
from autopack.estimation.plot import plot_predicted_vs_actual

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _events() -> list[dict[str, Any]]:
    """20 phases; every fourth was cut off once and finished on its retry (two rows)."""
    rows = []
    for i, (category, paths) in enumerate(
        [
            ("implementation", ["src/a.py", "tests/test_a.py"]),
            ("tests", ["tests/test_b.py"]),
            ("docs", ["README.md"]),
            ("config", ["pyproject.toml"]),
        ]
        * 5
    ):
        features = extract_features(category, "medium", paths, None)
        base = {
            "run_id": "r",
            "phase_id": f"p{i}",
            "model": "m",
            "category": category,
            "complexity": "medium",
            "deliverable_count": features.deliverable_count,
            "features": features.to_json(),
            "predicted_output_tokens": 500 + 300 * i,
            "predicted_p90_tokens": 900 + 540 * i,
            "max_tokens_sent": 1100 + 650 * i,
            "success": True,
        }
        if i % 4 == 0:
            rows.append(
                {
                    **base,
                    "attempt": 1,
                    "truncated": True,
                    "success": False,
                    "actual_output_tokens": 1100 + 650 * i,
                }
            )
            rows.append({**base, "attempt": 2, "actual_output_tokens": 1500 + 700 * i})
        else:
            rows.append({**base, "attempt": 1, "actual_output_tokens": 400 + 350 * i})
    rows.append(
        {
            "run_id": "r",
            "phase_id": "failed",
            "category": "docs",
            "predicted_output_tokens": 100,
            "actual_output_tokens": None,
        }
    )
    return rows


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_plot_writes_one_point_per_phase(tmp_path: Path) -> None:
    target = tmp_path / "pred_vs_actual.png"
    count = plot_predicted_vs_actual(_events(), target)
    assert count == 20  # 25 rows with tokens, 20 phases; the failed call has none
    assert target.stat().st_size > 10_000
    width, height = _png_size(target)
    assert width > 300 and height > 300


def test_plot_old_and_new_side_by_side(tmp_path: Path) -> None:
    single, both = tmp_path / "one.png", tmp_path / "two.png"
    plot_predicted_vs_actual(_events(), single, new=TokenEstimator.load())
    count = plot_predicted_vs_actual(
        _events(), both, old=TokenEstimator.load(), new=TokenEstimator.load(), title="v1 vs v1"
    )
    assert count == 20
    assert _png_size(both)[0] > 1.8 * _png_size(single)[0]  # two panels


def test_a_plot_is_written_in_the_format_its_name_says(tmp_path: Path) -> None:
    """``fit.svg`` was a PNG under that name; no suffix still means PNG."""
    plot_predicted_vs_actual(_events(), tmp_path / "fit.svg")
    assert b"<svg" in (tmp_path / "fit.svg").read_bytes()[:2000]
    plot_predicted_vs_actual(_events(), tmp_path / "fit.PDF")
    assert (tmp_path / "fit.PDF").read_bytes().startswith(b"%PDF")
    plot_predicted_vs_actual(_events(), tmp_path / "fit")
    _png_size(tmp_path / "fit")


def test_plot_with_no_data_still_writes_a_png(tmp_path: Path) -> None:
    target = tmp_path / "empty.png"
    assert plot_predicted_vs_actual([], target) == 0
    _png_size(target)


def test_plot_needs_no_display(tmp_path: Path) -> None:
    """A headless child with a GUI backend requested still writes the file (Agg is explicit)."""
    target = tmp_path / "headless.png"
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from autopack.estimation.plot import plot_predicted_vs_actual\n"
        "rows = [{'category': 'x', 'predicted_output_tokens': 10, 'actual_output_tokens': 20}]\n"
        "plot_predicted_vs_actual(rows, Path(sys.argv[1]))\n"
    )
    env = {"MPLBACKEND": "TkAgg", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code, str(target)], env=env, check=True, timeout=120)
    _png_size(target)


def test_a_plot_replaces_its_file_whole_and_writes_through_a_link(tmp_path: Path) -> None:
    """Drawn into memory, then moved over the old file whole (matplotlib wrote the target
    as it drew: a killed `--plot` left half an image). A link in its place is written
    through, as `--write` writes an estimator, not replaced by a file of its own."""
    real = tmp_path / "real.png"
    real.write_bytes(b"old")
    link = tmp_path / "fit.png"
    link.symlink_to(real)
    plot_predicted_vs_actual(_events(), link)
    assert link.is_symlink() and real.read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.png", "real.png"]
