"""`python -m bench` stays runnable and keeps its JSON shape (speed itself is never asserted: the numbers
are the benchmark's to print, on whatever machine runs it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO


@pytest.mark.slow
def test_the_benchmark_runs_and_writes_its_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["--quick", "--sizes", "1", "--no-replay", "--no-training", "--json", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for heading in ("latency per batch", "naive reference", "FLOP floor", "commands"):
        assert heading in done.stdout, heading
    result = json.loads(out.read_text())
    latency = result["latency_ms"]["1"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    assert set(latency["stages"]) >= {
        "guard",
        "features",
        "inference",
        "strategy",
        "risk",
        "journal",
        "logging",
    }
    assert result["naive_ratio"]["1"] > 0
    assert result["inference_floor_multiple"]["1000"] >= 1  # nothing runs faster than its FLOP floor
    assert result["peak_rss_mb"] > 0
    assert set(result["command_seconds"]) == {"--help", "status"}
