"""Run configuration: TOML + ``--set``, one-line InputErrors, and the declarations docs/configuration.md shows.

(tests/test_readme.py checks that every line of ``readme_key_table()`` appears in
docs/configuration.md; here: that its table is exactly that table, nothing stale added,
and that the declarations behind it are complete.)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hbl_mpi.core.config import CHOICES, DOCS, MINIMUM, RunConfig, load_config, readme_key_table, validate
from hbl_mpi.core.errors import InputError

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path, text: str, name: str = "run.toml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        call(*args, **kwargs)
    msg = str(info.value)
    assert msg and "\n" not in msg
    return msg


# ----------------------------------------------------------------- loading --

def test_toml_values_and_defaults(tmp_path):
    path = write(tmp_path, '''
data = "/abs/data.h5"
n = 5
s = 2
order = "ordered"
seed = 17
strategy = "LINE"
epochs = 10
learning_rate = 0.01
holdout_fraction = 0        # an integer is accepted for a float key
ckpt_enabled = true
fault_fail_nodes = ["1.2", "1.10"]
''')
    cfg = load_config(path)
    assert (cfg.data, cfg.n, cfg.s, cfg.order, cfg.seed) == ("/abs/data.h5", 5, 2, "ordered", 17)
    assert cfg.epoch_strategy.table(cfg.s) == [10, 5]
    assert cfg.learning_rate == 0.01 and cfg.holdout_fraction == 0.0 and isinstance(cfg.holdout_fraction, float)
    assert cfg.ckpt_enabled is True and cfg.fault_fail_nodes == ["1.2", "1.10"]
    untouched = {f.name for f in dataclasses.fields(RunConfig)} - {
        "data", "n", "s", "order", "seed", "strategy", "epochs", "learning_rate", "holdout_fraction",
        "ckpt_enabled", "fault_fail_nodes"}
    for key in untouched:
        assert getattr(cfg, key) == getattr(RunConfig(), key), key


def test_relative_data_is_relative_to_the_config_file(tmp_path):
    sub = tmp_path / "cfgs"
    sub.mkdir()
    cfg = load_config(write(sub, 'data = "../d/x.h5"\n'))
    assert Path(cfg.data) == sub / "../d/x.h5"
    # but --set data is relative to the working directory, as typed
    assert load_config(write(sub, 'data = "a.h5"\n'), ["data=b.h5"]).data == "b.h5"


def test_set_overrides_win_and_use_toml_syntax(tmp_path):
    path = write(tmp_path, 'data = "d.h5"\nn = 3\norder = "ordered"\n')
    cfg = load_config(path, ["n=6", "order=shuffled", 'strategy="exp2:12"', "learning_rate=1e-4",
                             "ckpt_enabled=true", "fault_nan_nodes=1.1,1.3", "dropout = 0.2"])
    assert cfg.n == 6 and cfg.order == "shuffled" and cfg.strategy == "exp2:12"
    assert cfg.learning_rate == 1e-4 and cfg.ckpt_enabled is True
    assert cfg.fault_nan_nodes == ["1.1", "1.3"] and cfg.dropout == 0.2
    # later --set wins over earlier; --out wins over both
    assert load_config(path, ["n=4", "n=5"]).n == 5
    assert load_config(path, ["out=a"], out="b").out == "b"
    # no file at all: --set alone is a complete config
    assert load_config(None, ["data=x.h5", "s=4"]).s == 4


def test_string_keys_take_set_values_as_written(tmp_path):
    # `2024` and `true` are TOML int/bool, but `out`/`data` are strings: keep the text
    cfg = load_config(None, ["data=true", "out=2024", "ckpt_directory = 1.5 "])
    assert (cfg.data, cfg.out, cfg.ckpt_directory) == ("true", "2024", "1.5")


# ------------------------------------------------------------------ errors --

@pytest.mark.parametrize("text, suggestion", [
    ("stages = 3", "'strategy'"),
    ("nn = 3", "'n'"),
    ("holdout-fraction = 0.2", "'holdout_fraction'"),
    ("learning_rat = 0.1", "'learning_rate'"),
    ("ckpt_keep_limt = 3", "'ckpt_keep_limit'"),
])
def test_unknown_key_suggests_nearest(tmp_path, text, suggestion):
    msg = one_line_error(load_config, write(tmp_path, 'data = "d.h5"\n' + text + "\n"))
    assert msg.startswith("unknown config key") and f"did you mean {suggestion}" in msg
    key = text.split("=")[0].strip()
    set_msg = one_line_error(load_config, None, ["data=d.h5", text.replace(" ", "")])
    assert f"unknown config key {key!r} in --set" in set_msg and suggestion in set_msg


def test_unknown_key_without_any_near_name(tmp_path):
    msg = one_line_error(load_config, write(tmp_path, 'data = "d.h5"\nzzzzqqq = 1\n'))
    assert "'zzzzqqq'" in msg and "did you mean" not in msg


@pytest.mark.parametrize("text, fragment", [
    ('n = "4"', "'n' must be int"),
    ("n = 4.5", "'n' must be int"),
    ("n = true", "'n' must be int"),
    ("seed = 1.0", "'seed' must be int"),
    ('learning_rate = "fast"', "'learning_rate' must be float"),
    ("learning_rate = true", "'learning_rate' must be float"),
    ("learning_rate = nan", "finite"),
    ("holdout_fraction = inf", "finite"),
    ("ckpt_enabled = 1", "'ckpt_enabled' must be bool"),
    ("order = 1", "'order' must be str"),
    ("fault_fail_nodes = [1, 2]", "list of strings"),
    ("[plan]\nn = 3", "section [plan]"),
    ("n = ", "not valid TOML"),
])
def test_bad_types_are_input_errors(tmp_path, text, fragment):
    msg = one_line_error(load_config, write(tmp_path, 'data = "d.h5"\n' + text + "\n"))
    assert fragment in msg


@pytest.mark.parametrize("override, fragment", [
    ("order=random", "'order' must be one of shuffled, ordered"),
    ("partition=blocks", "'partition' must be one of"),
    ("model=huge", "'model' must be one of"),
    ("inherit=first", "'inherit'"),
    ("device=tpu", "'device'"),
    ("ckpt_keep_mode=all", "'ckpt_keep_mode'"),
    ("n=1", "'n' must be >= 2"),
    ("s=0", "'s' must be >= 1"),
    ("epochs=0", "'epochs' must be >= 1"),
    ("patience=0", "'patience' must be >= 1"),
    ("batch_size=0", "'batch_size' must be >= 1"),
    ("threads=-1", "'threads' must be >= 0"),
    ("seed=-1", "'seed' must be >= 0"),
    ("min_delta=-0.1", "'min_delta' must be >= 0"),
    ("holdout_fraction=0.6", "holdout_fraction"),
    ("holdout_fraction=-0.1", "holdout_fraction"),
    ("learning_rate=0", "'learning_rate' must be > 0"),
    ("dropout=1.0", "'dropout' must be < 1"),
    ("strategy=F-30", "unknown strategy"),
    ("strategy=exp2:0", "epochs must be >= 1"),
    ("n=four", "'n' must be int"),
    ("n", "expected key=value"),
    ("expand=some", "'expand' must be one of full, adaptive"),
    ("expand_budget=0", "'expand_budget' must be in (0, 1]"),
    ("expand_budget=1.5", "'expand_budget' must be in (0, 1]"),
    ("expand_full_stages=0", "'expand_full_stages' must be >= 1"),
    ("expand_full_stages=4", "'expand_full_stages' must be <= s (3)"),
    ("expand_score=node_outlier", "'expand_score' must be one of"),
    ("expand_suspects=-1", "'expand_suspects' must be >= 0"),
])
def test_bad_values_are_input_errors(override, fragment):
    assert fragment in one_line_error(load_config, None, ["data=d.h5", override])


def test_missing_or_unreadable_file_and_missing_data(tmp_path):
    assert "does not exist" in one_line_error(load_config, str(tmp_path / "none.toml"))
    assert "is a directory; give the config file" in one_line_error(load_config, str(tmp_path))  # issue 28 item 8
    assert "'data' is missing" in one_line_error(load_config, write(tmp_path, "n = 3\n"))
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'data = "caf\xe9.h5"\n')
    assert "latin1.toml" in one_line_error(load_config, str(bad))


def test_validate_accepts_every_default():
    cfg = validate(RunConfig(data="d.h5"))
    assert cfg.epoch_strategy.table(cfg.s) == [20, 10, 5]  # EXP2, E=20, S=3


# ----------------------------------------------- declarations/configuration.md --

def test_every_key_is_documented_and_checks_name_real_keys():
    names = [f.name for f in dataclasses.fields(RunConfig)]
    assert list(DOCS) == names  # same keys, the doc's table in declaration order
    assert all(DOCS[k].strip() and "\n" not in DOCS[k] for k in names)
    assert set(CHOICES) <= set(names) and set(MINIMUM) <= set(names)
    defaults = RunConfig()
    for key, choices in CHOICES.items():
        assert getattr(defaults, key) in choices
        assert all(c in DOCS[key] for c in choices if key not in ("model", "ckpt_save_best_metric")), key


def test_configuration_doc_key_table_is_exactly_the_generated_one():
    readme = (ROOT / "docs/configuration.md").read_text().splitlines()
    table = readme_key_table().splitlines()
    start = readme.index(table[0])
    block = []
    for line in readme[start:]:
        if not line.startswith("|"):
            break
        block.append(line)
    assert block == table, "docs/configuration.md key table differs from hbl_mpi.core.config.readme_key_table() (regenerate it)"
    assert len(table) == 2 + len(dataclasses.fields(RunConfig))
