"""The parts of benchmarks/gpu_check.sh that run without a GPU: the script parses, says what it runs, stops in one
line without CUDA, and its table writer fills docs/RESULTS.md's GPU block from a phase_cost JSON."""

from __future__ import annotations

import subprocess

import torch

from benchmarks.gpu_table import END, START, replace_table, table
from tests.helpers import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def test_the_script_parses_and_its_help_says_what_it_runs_and_how_long():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    shown = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True)
    assert shown.returncode == 0 and "minutes" in shown.stdout
    assert all(part in shown.stdout for part in ("tests/test_cuda.py", "phase_cost.py", "--nproc 2", "UNet2DModel"))


def test_without_cuda_it_stops_in_one_line():
    if torch.cuda.is_available():
        return
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and result.stderr.strip().startswith("error: no CUDA device is visible")


def test_a_phase_cost_result_becomes_the_gpu_table_of_the_results():
    import json

    results = json.loads((ROOT / "benchmarks" / "results" / "phase_cost_cpu.json").read_text())
    rendered = table(results)
    rows = [line for line in rendered.splitlines() if line.startswith(f"| {results['configs'][0]['config']} |")]
    assert len(rows) == len(results["configs"][0]["methods"])
    fixmatch = next(row for row in rows if "| fixmatch |" in row)
    assert "| 1.00 |" in fixmatch  # x FixMatch of FixMatch itself
    document = (ROOT / "docs" / "RESULTS.md").read_text()
    assert START in document and END in document
    updated = replace_table(document, rendered)
    assert rendered in updated and updated.count(START) == 1
    assert updated.split(START)[0] == document.split(START)[0] and updated.split(END)[1] == document.split(END)[1]
