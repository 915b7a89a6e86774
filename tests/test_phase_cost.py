"""The phase-cost benchmark runs end to end and reports what it claims to (its timings are not checked here)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import phase_cost


def test_phase_cost_reports_every_method_with_ratios_to_fixmatch(tmp_path: Path, capsys) -> None:
    output = tmp_path / "cost.json"
    methods = ["fixmatch", "generative uncached", "metassl finite_difference last_block"]
    budget = ["--iterations", "3", "--warmup", "1"]
    phase_cost.main(
        ["--config", "cpu_demo", "--device", "cpu", *budget, "--methods", *methods, "--output", str(output)]
    )
    result = json.loads(output.read_text())["configs"][0]
    rows = {row["method"]: row for row in result["methods"]}
    assert list(rows) == methods and result["timed_iterations"] == 3
    assert rows["fixmatch"]["x_fixmatch"] == 1.0
    assert rows["fixmatch"]["generated_per_iteration"] is None
    assert rows["generative uncached"]["generated_per_iteration"] == result["unlabeled_batch_size"]
    meta = rows["metassl finite_difference last_block"]
    assert meta["meta_s"] > 0 and meta["s_per_iteration"] >= meta["meta_s"]
    low, high = meta["s_per_iteration_quartiles"]
    assert low <= meta["s_per_iteration"] <= high
    assert all(row["peak_memory_mb"] > 0 for row in rows.values())
    # after the whole bank is rendered, an SSL step generates only rows the meta phase has moved since
    assert 0 < meta["generated_per_iteration"] < result["unlabeled_batch_size"]
    assert "| metassl finite_difference last_block |" in capsys.readouterr().out
