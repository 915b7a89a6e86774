"""Write a phase_cost JSON into docs/RESULTS.md's GPU table (between its `gpu-table` markers), with its provenance.

python benchmarks/gpu_table.py benchmarks/results/phase_cost_gpu.json docs/RESULTS.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

START, END = "<!-- gpu-table:start -->", "<!-- gpu-table:end -->"


def _cell(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def table(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [
        f"**GPU, {env.get('gpu', env['device'])}, {env['precision']}** (`benchmarks/gpu_check.sh`, commit "
        f"{env['git_commit']}, torch {env['torch']}). `stl10_shape` is 96 px ResNet-18 with a randomly initialised "
        "UNet2DModel the size of `openai/diffusers-cd_imagenet64_l2`, no downloads.",
        "",
        "| config | method | ms / iteration | × FixMatch | meta phase ms | images/s | peak MB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for config in results["configs"]:
        for row in config["methods"]:
            cells = [
                config["config"],
                row["method"].replace("_", " ", 1) if row["method"].startswith("metassl_") else row["method"],
                _cell(row["s_per_iteration"], 1000),
                _cell(row["x_fixmatch"], digits=2),
                _cell(row["meta_s"], 1000),
                _cell(row["images_per_s"], digits=0),
                _cell(row["peak_memory_mb"], digits=0),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def replace_table(document: str, new_table: str) -> str:
    if START not in document or END not in document:
        raise SystemExit(f"error: no {START} ... {END} block in the document")
    before, rest = document.split(START, 1)
    after = rest.split(END, 1)[1]
    return f"{before}{START}\n{new_table}\n{END}{after}"


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit(__doc__)
    results = json.loads(Path(argv[0]).read_text())
    target = Path(argv[1])
    target.write_text(replace_table(target.read_text(), table(results)))
    print(f"updated the GPU table in {target}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
