import pytest

from unlearning.evaluation.metrics.tow import tug_of_war


def test_tow_equals_hand_computed_value():
    unlearned = {"retain": 0.95, "forget": 0.40, "test": 0.70}
    oracle = {"retain": 0.99, "forget": 0.30, "test": 0.75}
    # (1 - (0.99-0.95)) * (1 - (0.40-0.30)) * (1 - (0.75-0.70)) = 0.96 * 0.90 * 0.95
    assert tug_of_war(unlearned, oracle) == pytest.approx(0.8208)
    assert tug_of_war(unlearned, oracle, absolute=True) == pytest.approx(0.8208)


def test_raw_tow_exceeds_one_when_unlearned_beats_oracle_but_abs_does_not():
    unlearned = {"retain": 1.00, "forget": 0.20, "test": 0.80}
    oracle = {"retain": 0.98, "forget": 0.30, "test": 0.75}
    # raw: 1.02 * 1.10 * 1.05 ; abs: 0.98 * 0.90 * 0.95
    assert tug_of_war(unlearned, oracle) == pytest.approx(1.02 * 1.10 * 1.05)
    assert tug_of_war(unlearned, oracle, absolute=True) == pytest.approx(0.98 * 0.90 * 0.95)


def test_tow_of_the_oracle_itself_is_one():
    acc = {"retain": 0.9, "forget": 0.5, "test": 0.7}
    assert tug_of_war(acc, acc) == 1.0
    assert tug_of_war(acc, acc, absolute=True) == 1.0
