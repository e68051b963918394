"""Epoch strategies: the paper's Table 1 values for E = 20, S = 5, and the parser's errors."""

from __future__ import annotations

import math

import pytest

from hbl_mpi.core.config import RunConfig
from hbl_mpi.core.epochs import EpochStrategy, parse_strategy
from hbl_mpi.core.errors import InputError

pytestmark = pytest.mark.timeout(30)

# the paper's Table 1, S = 5 stages
TABLE_1 = {
    "F-20": [20, 20, 20, 20, 20],
    "F-10": [10, 10, 10, 10, 10],
    "LINE": [20, 16, 12, 8, 4],
    "SQRT": [20, 14, 12, 10, 9],
    "EXP2": [20, 10, 5, 2, 1],
}


@pytest.mark.parametrize("name, expected", TABLE_1.items())
def test_named_strategies_match_table_1(name, expected):
    strategy = parse_strategy(name, epochs=20)
    assert strategy.table(5) == expected
    assert [strategy.budget(s, 5) for s in range(1, 6)] == expected
    assert strategy.label == name


@pytest.mark.parametrize("text, expected", [
    ("flat:20", TABLE_1["F-20"]), ("line:20", TABLE_1["LINE"]),
    ("sqrt:20", TABLE_1["SQRT"]), ("exp2:20", TABLE_1["EXP2"]),
    ("flat:7", [7] * 5),
    ("line:10", [10, 8, 6, 4, 2]),          # 10*(5-s+1)//5
    ("sqrt:12", [12, 8, 7, 6, 5]),          # round(12/sqrt(s)): 8.49, 6.93, 6.0, 5.37
    ("exp2:12", [12, 6, 3, 1, 1]),          # max(12 // 2**(s-1), 1)
    ("line:3", [3, 2, 1, 1, 1]),            # 3*1//5 = 0 at the last stage, raised to 1
    ("exp2:1", [1, 1, 1, 1, 1]),
])
def test_explicit_base_epochs(text, expected):
    assert parse_strategy(text).table(5) == expected


def test_line_never_plans_zero_epochs():
    # LINE with E < S would give E*(S-s+1)//S = 0 at the last stages; a node always trains
    assert parse_strategy("line:2").table(5) == [2, 1, 1, 1, 1]
    assert min(parse_strategy("line:1").table(8)) == 1


def test_formulas_for_other_e_and_s():
    for e in (1, 5, 13, 20, 50):
        for stages in (1, 3, 7):
            for s in range(1, stages + 1):
                assert parse_strategy(f"line:{e}").budget(s, stages) == max(e * (stages - s + 1) // stages, 1)
                assert parse_strategy(f"exp2:{e}").budget(s, stages) == max(e // 2 ** (s - 1), 1)
                assert parse_strategy(f"sqrt:{e}").budget(s, stages) == max(math.floor(e / math.sqrt(s) + 0.5), 1)
                assert parse_strategy(f"flat:{e}").budget(s, stages) == e


def test_named_strategies_take_e_from_epochs_except_flat_ones():
    assert parse_strategy("EXP2", epochs=8).table(4) == [8, 4, 2, 1]
    assert parse_strategy("LINE", epochs=10).table(5) == [10, 8, 6, 4, 2]
    assert parse_strategy("SQRT", epochs=30).table(3) == [30, 21, 17]
    assert parse_strategy("F-20", epochs=8).table(3) == [20, 20, 20]  # F-20 fixes E
    assert parse_strategy("F-10", epochs=8).table(3) == [10, 10, 10]
    # names are case-insensitive, whitespace tolerated
    assert parse_strategy(" exp2 ", epochs=20) == EpochStrategy("exp2", 20)
    assert parse_strategy("f-10") == EpochStrategy("flat", 10)
    assert parse_strategy("EXP2:6") == EpochStrategy("exp2", 6)


def test_config_strategy_uses_epochs_key():
    cfg = RunConfig(data="x.h5", strategy="LINE", epochs=10, s=5)
    assert cfg.epoch_strategy.table(cfg.s) == [10, 8, 6, 4, 2]


def test_labels_of_explicit_strategies():
    assert parse_strategy("exp2:12").label == "exp2:12"
    assert parse_strategy("flat:20").label == "F-20"
    assert parse_strategy("flat:10").label == "F-10"


@pytest.mark.parametrize("text", [
    "F-30", "EXP3", "", "exp2:", "exp2:x", "exp2:0", "line:-3", "flat:2.5", "cubic:20", "exp2:20:1",
])
def test_bad_strategies_are_input_errors(text):
    with pytest.raises(InputError) as info:
        parse_strategy(text)
    assert "\n" not in str(info.value) and "strategy" in str(info.value)


@pytest.mark.parametrize("text", ["EXP2", "LINE", "SQRT", "flat", "exp2"])
@pytest.mark.parametrize("epochs", [0, -4])
def test_named_strategy_with_bad_epochs_is_input_error(text, epochs):
    with pytest.raises(InputError, match="epochs"):
        parse_strategy(text, epochs=epochs)


def test_stage_outside_the_tree_is_a_programming_error():
    with pytest.raises(ValueError):
        parse_strategy("EXP2").budget(0, 5)
    with pytest.raises(ValueError):
        parse_strategy("EXP2").budget(6, 5)
