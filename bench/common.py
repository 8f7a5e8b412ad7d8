"""What every benchmark shares: a result row with its aim, interleaved timing, config composition.

A benchmark reports *ratios of two things measured in the same run* (STYLE.md): the variants are
timed in alternating order within every repeat, so drift of a shared machine hits all of them
alike, and the reported ratio is the median over repeats of the per-repeat ratio.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

#: the three run sizes of ``python -m bench``: full, ``--quick``, ``--smoke`` (tiny, for the test)
SIZES = ("full", "quick", "smoke")


@dataclass(frozen=True)
class Aim:
    """What a ratio should satisfy: ``ratio <= value`` (``op="<="``) or ``ratio >= value``;
    ``op=""`` = reported only."""

    op: str = ""
    value: float = 0.0

    def met(self, ratio: float | None) -> bool | None:
        if not self.op or ratio is None:
            return None
        return ratio <= self.value if self.op == "<=" else ratio >= self.value

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}" if self.op else "report"


REPORT = Aim()


@dataclass
class Row:
    """One line of the table: issue item, what is compared, the measured ratio and its aim;
    ``note`` says what was measured and, when the aim is missed, why."""

    item: str
    name: str
    ratio: float | None
    aim: Aim = REPORT
    note: str = ""
    details: dict[str, float] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        if self.ratio is None:
            return "not run"
        met = self.aim.met(self.ratio)
        return "-" if met is None else ("meets" if met else "MISSES")


def interleaved(
    variants: Mapping[str, Callable[[], float]], repeats: int
) -> dict[str, list[float]]:
    """Seconds per repeat of every variant (each callable returns its own measured seconds),
    run in forward order on even repeats and reversed order on odd ones."""
    names = list(variants)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            seconds[name].append(variants[name]())
    return seconds


def paired_ratio(seconds: Mapping[str, list[float]], num: str, den: str) -> float:
    """Median over repeats of ``seconds[num][r] / seconds[den][r]``."""
    return statistics.median(a / b for a, b in zip(seconds[num], seconds[den], strict=True))


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def compose_config(overrides: list[str], output_dir: Path, cache_dir: Path):
    """The real ``conf/config.yaml`` composed with ``overrides`` (no progress bar, no logger),
    writing into ``output_dir`` and ``cache_dir``: what ``train.py`` would run."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(
            "config",
            overrides=[
                "trainer.enable_progress_bar=false",
                "logger=none",
                f"paths.output_dir={output_dir}",
                f"paths.cache_dir={cache_dir}",
                *overrides,
            ],
        )
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg
