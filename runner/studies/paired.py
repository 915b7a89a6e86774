"""Paired differences between methods: the same seeds (same label split, init and data order), with 95% CIs."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from schemas import UserError


@dataclass
class Reference:
    """A row selector: a method name plus `key=value` settings, e.g. `generative,method.latents.classes=pseudo`."""

    text: str
    method: str
    settings: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> Reference:
        method, *pairs = [part.strip() for part in text.split(",") if part.strip()]
        settings = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep:
                raise UserError(f"--reference '{text}': write settings as key=value, e.g. generative,seed=0")
            settings[key] = value
        return cls(text, method, settings)

    def matches(self, group: dict[str, str]) -> bool:
        return group["method"] == self.method and all(group.get(k) == v for k, v in self.settings.items())


@dataclass
class PairedDifference:
    row_label: str
    reference: str
    labels: str
    pairs: int
    mean: float
    low: float
    high: float


def t_quantile(degrees: int, level: float = 0.975) -> float:
    from scipy.stats import t

    return float(t.ppf(level, degrees))


def paired_difference(values: dict[str, float], reference: dict[str, float]) -> tuple[int, float, float, float]:
    """(pairs, mean difference, 95% CI low, high) over the seeds both have; a t interval on the differences."""
    seeds = sorted(set(values) & set(reference))
    diffs = [values[s] - reference[s] for s in seeds]
    if not diffs:
        return 0, math.nan, math.nan, math.nan
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return len(diffs), mean, math.nan, math.nan
    half = t_quantile(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return len(diffs), mean, mean - half, mean + half


def paired_rows(rows: list[Any], references: list[Reference], label_of: dict[int, str]) -> list[PairedDifference]:
    """Every row against every reference row of the same label budget, paired by seed."""
    out = []
    for reference in references:
        chosen = [row for row in rows if reference.matches(row.group)]
        if not chosen:
            raise UserError(f"--reference '{reference.text}': no row of the report matches it")
        for ref in chosen:
            ref_values = dict(zip(ref.seeds, ref.values, strict=True))
            for row in rows:
                if row is ref or row.group["labels"] != ref.group["labels"]:
                    continue
                pairs, mean, low, high = paired_difference(dict(zip(row.seeds, row.values, strict=True)), ref_values)
                if pairs:
                    labels = row.group["labels"]
                    out.append(PairedDifference(label_of[id(row)], label_of[id(ref)], labels, pairs, mean, low, high))
    return out


def paired_markdown(differences: list[PairedDifference], factor: float, unit: str) -> str:
    lines = [
        f"| labels | method | − reference | paired seeds | difference ({unit}) | 95% CI |",
        "| --- | --- | --- | ---: | ---: | --- |",
    ]
    for d in differences:
        ci = "n/a" if math.isnan(d.low) else f"[{d.low * factor:+.2f}, {d.high * factor:+.2f}]"
        lines.append(f"| {d.labels} | {d.row_label} | {d.reference} | {d.pairs} | {d.mean * factor:+.2f} | {ci} |")
    return "\n".join(lines) + "\n"
