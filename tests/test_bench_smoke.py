"""``python -m bench`` runs and its table has every item of issue #10 (tiny sizes; no timing is
asserted: benchmarks report ratios, tests never judge them)."""

from __future__ import annotations

import re

import pytest

from bench import run_all
from bench.common import Aim, Row
from bench.report_text import explanations


def test_aims_and_verdicts():
    assert Row("1", "x", 2.05, Aim("<=", 2.1)).verdict == "meets"
    assert Row("1", "x", 2.3, Aim("<=", 2.1)).verdict == "MISSES"
    assert Row("3", "x", 0.8, Aim(">=", 4.0)).verdict == "MISSES"
    assert Row("5", "x", 7.0).verdict == "-"  # reported only
    assert Row("6", "x", None, Aim("<=", 0.4)).verdict == "not run"


def test_missed_aims_are_explained():
    rows = [Row("2", "epoch", 1.5, Aim("<=", 1.1)), Row("4", "data", 5.0, Aim(">=", 3.0))]
    text = run_all.format_table(rows) + "\n" + explanations(rows)
    assert "| 2 | epoch | 1.5 | <= 1.1 | MISSES |" in text
    assert "- item 2:" in text and "- item 4:" not in text


def test_smoke_run_writes_a_table_with_every_item(tmp_path, capsys):
    out = tmp_path / "benchmarks.md"
    assert run_all.main(["--smoke", "--out", str(out)]) == 0
    text = out.read_text()
    table = [line for line in text.splitlines() if re.match(r"\| \d \|", line)]
    assert {line.split("|")[1].strip() for line in table} == set(run_all.ITEMS)
    # every benchmark that runs in smoke sizes produced a number, none failed
    assert "(failed)" not in text
    measured = {line.split("|")[1].strip() for line in table if "not run" not in line}
    assert {"1", "2", "3", "4", "5"} <= measured
    assert "python -m bench --smoke" in text and "## Why an aim is missed" in text
    assert "| item | ratio of |" in capsys.readouterr().out


@pytest.mark.slow
def test_quick_run_measures_every_item(tmp_path):
    out = tmp_path / "benchmarks.md"
    assert run_all.main(["--quick", "--out", str(out)]) == 0
    text = out.read_text()
    assert "not run" not in text and "(failed)" not in text
