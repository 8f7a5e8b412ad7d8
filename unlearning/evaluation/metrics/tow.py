"""Tug-of-war (ToW) between forgetting and retaining (000 eq. 10)."""

from __future__ import annotations

from collections.abc import Mapping


def tug_of_war(
    unlearned: Mapping[str, float], oracle: Mapping[str, float], absolute: bool = False
) -> float:
    """ToW of 000 eq. 10 from accuracies in [0, 1] keyed ``retain``, ``forget``, ``test``.

    ``ToW = (1 − (Acc_o(R) − Acc_u(R))) · (1 − (Acc_u(F) − Acc_o(F))) · (1 − (Acc_o(test) −
    Acc_u(test)))`` with o the oracle f_A(R) and u the unlearned model. With raw differences
    (the paper's choice) ToW can exceed 1 when the unlearned model beats the oracle; with
    ``absolute=True`` each difference is taken in absolute value (the earlier convention,
    reported as ``tow_abs``), so ToW ≤ 1 and equals 1 only for the oracle's accuracies.
    """
    gaps = (
        oracle["retain"] - unlearned["retain"],
        unlearned["forget"] - oracle["forget"],
        oracle["test"] - unlearned["test"],
    )
    value = 1.0
    for gap in gaps:
        value *= 1.0 - (abs(gap) if absolute else gap)
    return value
