"""One page per dataset for ``snakemake --report``: what a person looks for first after a run.

The page holds the figures of ``SEG.txt`` (SEG, DET, OP_CSB, parameters, PESEG), the score of
every sequence, the time and memory of every job that led to them (Snakemake's benchmark files)
and the Jaccard index of every reference object, worst first. It is plain HTML, which the
report shows inline (tables in other formats are only offered for download there).
"""

from __future__ import annotations

import csv
import html
import os
from collections.abc import Iterable
from pathlib import Path

from .files import atomic_write_text
from .scores import REFERENCE_NAMES, DatasetScores, seg_text

# Columns of a Snakemake benchmark file this page shows, and their headings.
BENCHMARK_COLUMNS = {
    "h:m:s": "wall time (h:m:s)",
    "cpu_time": "CPU time (s)",
    "max_rss": "peak memory (MB, RSS)",
    "mean_load": "mean CPU load (%)",
}

STYLE = """
body { font-family: sans-serif; margin: 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
th { background: #f0f0f0; }
td.text, th.text { text-align: left; }
pre { background: #f8f8f8; padding: 0.5em; }
"""


def read_benchmarks(paths: Iterable[str | os.PathLike]) -> list[dict[str, str]]:
    """One row per benchmark file: ``job`` (the file's name without ``.tsv``) and the values
    of its first measurement (Snakemake writes one line per ``--benchmark-repeats``)."""
    rows = []
    for path in sorted(map(Path, paths)):
        with path.open(newline="") as fh:
            first = next(csv.DictReader(fh, delimiter="\t"), None)
        if first is not None:
            rows.append({"job": path.stem, **first})
    return rows


def read_objects(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of an ``objects.csv`` (:func:`.metrics.write_evaluation`)."""
    with Path(path).open(newline="") as fh:
        return list(csv.DictReader(fh))


def summary_html(
    scores: DatasetScores,
    objects: dict[str, str | os.PathLike],
    benchmarks: Iterable[str | os.PathLike],
) -> str:
    """The page of one dataset.

    Parameters
    ----------
    scores
        The dataset's held-out scores (:func:`.scores.dataset_scores`).
    objects
        sequence -> its ``objects.csv``.
    benchmarks
        Snakemake benchmark files of the jobs behind the scores.
    """
    title = f"{scores.name} ({scores.ctc_name}): held-out scores, time and memory"
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Scored against the {html.escape(REFERENCE_NAMES[scores.reference])}. Each "
        "sequence was segmented by models that never saw it. PESEG = SEG / parameters x "
        "10<sup>6</sup>.</p>",
        _table(
            ["SEG", "DET", "OP_CSB", "parameters", "PESEG"],
            [
                [
                    _number(scores.seg),
                    _number(scores.det),
                    _number(scores.op_csb),
                    f"{scores.parameters:,}",
                    _number(scores.peseg),
                ]
            ],
        ),
        "<h2>Sequences</h2>",
        _table(
            ["sequence", "models", "trained on", "SEG", "DET", "reference objects", "parameters"],
            [
                [
                    s.sequence,
                    s.models,
                    ", ".join(s.trained_on),
                    _number(s.seg),
                    _number(s.det),
                    str(s.n_reference_objects),
                    f"{s.parameters:,}",
                ]
                for s in scores.sequences
            ],
            text_columns=3,
        ),
        "<h2>Time and memory per job</h2>",
        _benchmark_section(read_benchmarks(benchmarks)),
        "<h2>SEG.txt</h2>",
        f"<pre>{html.escape(seg_text(scores))}</pre>",
        "<h2>Reference objects</h2>",
        _objects_section(objects),
    ]
    body = "\n".join(parts)
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def write_summary_page(
    path: str | os.PathLike,
    scores: DatasetScores,
    objects: dict[str, str | os.PathLike],
    benchmarks: Iterable[str | os.PathLike],
) -> None:
    atomic_write_text(Path(path), summary_html(scores, objects, benchmarks))


def _benchmark_section(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "<p>No benchmark files.</p>"
    total = sum(float(r.get("s", 0) or 0) for r in rows)
    peak = max(float(r.get("max_rss", 0) or 0) for r in rows)
    note = (
        f"<p>{len(rows)} jobs, {total / 3600:.2f} h of wall time in all (jobs may have run at "
        f"the same time); largest peak memory {peak:,.0f} MB. Measured by Snakemake "
        "(<code>results/&lt;ds&gt;/benchmarks/</code>); very short jobs show 0 MB.</p>"
    )
    table = _table(
        ["job", *BENCHMARK_COLUMNS.values()],
        [[r["job"], *(r.get(column, "") for column in BENCHMARK_COLUMNS)] for r in rows],
        text_columns=1,
    )
    return note + table


def _objects_section(objects: dict[str, str | os.PathLike]) -> str:
    rows = []
    for sequence, path in sorted(objects.items()):
        rows += [{"sequence": sequence, **row} for row in read_objects(path)]
    if not rows:
        return "<p>No reference objects.</p>"
    rows.sort(key=lambda r: (float(r["jaccard"]), r["sequence"], int(r["frame"])))
    missed = sum(float(r["jaccard"]) == 0 for r in rows)
    columns = ["sequence", "frame", "slice", "reference_label", "matched_label", "jaccard"]
    table = _table(
        columns,
        [[r.get(c, "") if c != "jaccard" else _number(float(r[c])) for c in columns] for r in rows],
    )
    return (
        f"<p>{len(rows)} reference objects, {missed} not matched (Jaccard 0: no predicted "
        "object covers more than half of them); worst first. Slice is empty for objects "
        "annotated in 3D. Also in <code>results/&lt;ds&gt;/evaluation/&lt;seq&gt;/objects.csv"
        f"</code>.</p>\n<details><summary>show the table</summary>\n{table}\n</details>"
    )


def _table(headings: list[str], rows: list[list[str]], text_columns: int = 0) -> str:
    def cell(tag: str, index: int, value: str) -> str:
        css = " class='text'" if index < text_columns else ""
        return f"<{tag}{css}>{html.escape(str(value))}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(headings))
    body = "\n".join(
        "<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table>\n<tr>{head}</tr>\n{body}\n</table>"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6f}"
