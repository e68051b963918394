"""Plug-in models and the optimizers: the contract's checks, fingerprints, and forks that
continue the optimizer exactly (docs/models.md)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hbl_mpi.core.config import RunConfig, load_config
from hbl_mpi.core.errors import InputError
from hbl_mpi.models.plugin import check_model, resolve
from hbl_mpi.train.flat_state import TrainState
from hbl_mpi.train.optim import OptimizerSpec
from hbl_mpi.uno import InputSpec, build_model

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = str(ROOT / "examples" / "my_model.py")
SPEC = InputSpec((("cell.rnaseq", 12), ("drug.descriptors", 9)), has_dose=False)

BAD_MODELS = {
    "raises": ("def build(inputs, params):\n    raise ValueError('no such width')\n", "raised ValueError: no such width"),
    "not_a_module": ("def build(inputs, params):\n    return 3\n", "returned int, not a torch.nn.Module"),
    "shape": ("import torch\nfrom torch import nn\n"
              "def build(inputs, params):\n    return nn.Linear(inputs.groups[0][1], 1)\n",
              "forward on a probe batch"),
    "shape_b1": ("import torch\nfrom torch import nn\nclass M(nn.Module):\n"
                 "    def __init__(s, w):\n        super().__init__(); s.l = nn.Linear(w, 1)\n"
                 "    def forward(s, a, b):\n        return s.l(a)\n"
                 "def build(inputs, params):\n    return M(inputs.groups[0][1])\n",
                 "forward returned (3, 1)"),
    "float64": ("import torch\nfrom torch import nn\nclass M(nn.Module):\n"
                "    def __init__(s, w):\n        super().__init__(); s.l = nn.Linear(w, 1).double()\n"
                "    def forward(s, a, b):\n        return s.l(a.double()).squeeze(1)\n"
                "def build(inputs, params):\n    return M(inputs.groups[0][1])\n",
                "is torch.float64"),
    "batchnorm": ("import torch\nfrom torch import nn\nclass M(nn.Module):\n"
                  "    def __init__(s, w):\n        super().__init__(); s.n = nn.BatchNorm1d(w); s.l = nn.Linear(w, 1)\n"
                  "    def forward(s, a, b):\n        return s.l(s.n(a)).squeeze(1)\n"
                  "def build(inputs, params):\n    return M(inputs.groups[0][1])\n",
                  "changed in a training step"),
    "random_buffer": ("import torch\nfrom torch import nn\nclass M(nn.Module):\n"
                      "    def __init__(s, w):\n        super().__init__(); s.l = nn.Linear(w, 1)\n"
                      "        s.register_buffer('proj', torch.randn(w))\n"
                      "    def forward(s, a, b):\n        return s.l(a * s.proj).squeeze(1)\n"
                      "def build(inputs, params):\n    return M(inputs.groups[0][1])\n",
                      "depends on the random seed"),
    "no_params": ("import torch\nfrom torch import nn\nclass M(nn.Module):\n"
                  "    def forward(s, a, b):\n        return a.sum(1)\n"
                  "def build(inputs, params):\n    return M()\n", "no parameters"),
}


@pytest.mark.parametrize("kind", sorted(BAD_MODELS))
def test_a_bad_model_is_refused_with_one_line(tmp_path, kind):
    text, message = BAD_MODELS[kind]
    path = tmp_path / f"{kind}.py"
    path.write_text(text)
    with pytest.raises(InputError) as e:
        check_model(resolve(f"{path}:build"), SPEC)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_missing_file_module_and_attribute_are_refused(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        resolve(f"{tmp_path}/absent.py:build")
    with pytest.raises(InputError, match="cannot be imported: ModuleNotFoundError"):
        resolve("no_such_package.models:build")
    with pytest.raises(InputError, match="has no attribute 'make'"):
        resolve(f"{EXAMPLE}:make")
    (tmp_path / "broken.py").write_text("def build(:\n")
    with pytest.raises(InputError, match="cannot be imported: SyntaxError"):
        resolve(f"{tmp_path}/broken.py:build")


def test_a_constant_buffer_is_allowed(tmp_path):
    path = tmp_path / "mask.py"
    path.write_text("import torch\nfrom torch import nn\nclass M(nn.Module):\n"
                    "    def __init__(s, w):\n        super().__init__(); s.l = nn.Linear(w, 1)\n"
                    "        s.register_buffer('mask', torch.arange(w) % 2 == 0)\n"
                    "    def forward(s, a, b):\n        return s.l(a * s.mask).squeeze(1)\n"
                    "def build(inputs, params):\n    return M(inputs.groups[0][1])\n")
    assert check_model(resolve(f"{path}:build"), SPEC) == 13


def test_presets_resolve_to_uno_unchanged():
    src = resolve("tiny")
    assert src.is_preset and src.fingerprint_hash == "" and src.name == "tiny"
    torch.manual_seed(1)
    a = src.build(SPEC)
    torch.manual_seed(1)
    b = build_model(SPEC, "tiny")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_config_model_file_is_relative_to_the_config_and_params_are_a_table(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "net.py").write_text(Path(EXAMPLE).read_text())
    cfg_path = tmp_path / "run.toml"
    cfg_path.write_text('data = "d.h5"\nmodel = "m/net.py:build"\n[model_params]\nhidden = 8\n')
    cfg = load_config(str(cfg_path), ["model_params.rank=2"])
    assert cfg.model == str(tmp_path / "m" / "net.py:build")
    assert cfg.model_params == {"hidden": 8, "rank": 2}
    for bad, message in ((["model=net.py"], "must be one of small"), (["model_params.x=1"], "for plug-in models"),
                         (["model=a.py:build", "dropout=0.1"], "a plug-in model takes its own"),
                         (["optimizer=sgd", "group_size=2"], "runs adam and adamw only"),
                         (["momentum=0.9"], "sgd's"), (["optimizer=lamb"], "must be one of adam")):
        with pytest.raises(InputError, match=message):
            load_config(None, ["data=d.h5", *bad])


def test_fingerprint_adds_the_plugin_source_and_params_and_restart_refuses_a_changed_model(tmp_path):
    from hbl_mpi.checkpoint.restart import check_compatible, run_fingerprint

    assert run_fingerprint(RunConfig(data="x.h5"), "abc") == "b43c15eec2190ec0"  # presets: as before plug-ins
    path = tmp_path / "net.py"
    path.write_text(Path(EXAMPLE).read_text())
    cfg = RunConfig(data="x.h5", model=f"{path}:build")
    one = resolve(cfg.model).fingerprint_hash
    fp = run_fingerprint(cfg, "abc", one)
    assert fp != run_fingerprint(cfg, "abc", "")
    moved = RunConfig(data="x.h5", model=f"{tmp_path}/elsewhere/net.py:build")
    assert run_fingerprint(moved, "abc", one) == fp  # the same file content under another directory
    assert run_fingerprint(RunConfig(data="x.h5", model=cfg.model, model_params={"hidden": 8}), "abc", one) != fp
    assert run_fingerprint(RunConfig(data="x.h5", optimizer="adamw"), "abc") != "b43c15eec2190ec0"
    path.write_text(Path(EXAMPLE).read_text() + "\n# changed\n")
    two = resolve(cfg.model).fingerprint_hash
    assert two != one and run_fingerprint(cfg, "abc", two) != fp
    previous = SimpleNamespace(config=cfg.as_dict(), data_checksum="abc", versions={"model_source": one})
    check_compatible(previous, cfg, "abc", one)
    with pytest.raises(InputError, match="has changed since the previous run"):
        check_compatible(previous, cfg, "abc", two)


def _steps(ts: TrainState, xs, y, n: int) -> None:
    for _ in range(n):
        ts.zero_grad()
        (ts.forward(*xs) - y).square().mean().backward()
        ts.optimizer_step()


@pytest.mark.parametrize("opt", [OptimizerSpec("adam"), OptimizerSpec("adamw", weight_decay=0.01),
                                 OptimizerSpec("sgd", momentum=0.9), OptimizerSpec("sgd")])
def test_a_fork_continues_the_parents_optimizer_exactly(opt):
    """Train 3 steps, snapshot (what a fork sends), load into a fresh TrainState, 3 more: bit
    for bit what 6 uninterrupted steps give, which a fresh optimizer state would not."""
    torch.manual_seed(0)
    xs, y = (torch.randn(32, 12), torch.randn(32, 9)), torch.randn(32)
    torch.manual_seed(2)
    whole = TrainState(build_model(SPEC, "tiny"), 1e-2, optimizer=opt)
    assert whole.flat.numel() == (1 + opt.slots) * whole.n_params
    child = TrainState(build_model(SPEC, "tiny"), 1e-2, optimizer=opt)
    fresh = TrainState(build_model(SPEC, "tiny"), 1e-2, optimizer=opt)
    _steps(whole, xs, y, 3)
    parent = whole.snapshot()
    assert parent.step == 3
    child.load(parent)
    _steps(whole, xs, y, 3)
    _steps(child, xs, y, 3)
    assert child.step == whole.step == 6
    assert torch.equal(child.flat, whole.flat)
    if opt.slots:  # weights alone are not the state: restarting the optimizer differs
        fresh.load(parent)
        fresh.flat[parent.n_params:].zero_()
        _steps(fresh, xs, y, 3)
        assert not torch.equal(fresh.flat[: parent.n_params], whole.flat[: parent.n_params])


def test_adam_is_torch_adam_and_a_state_of_another_optimizer_is_refused():
    torch.manual_seed(0)
    xs, y = (torch.randn(16, 12), torch.randn(16, 9)), torch.randn(16)
    torch.manual_seed(3)
    ts = TrainState(build_model(SPEC, "tiny"), 1e-3)
    torch.manual_seed(3)
    ref = build_model(SPEC, "tiny")
    adam = torch.optim.Adam(ref.parameters(), lr=1e-3)
    for _ in range(3):
        adam.zero_grad()
        (ref(*xs) - y).square().mean().backward()
        adam.step()
    _steps(ts, xs, y, 3)
    assert torch.equal(torch.cat([p.reshape(-1) for p in ref.parameters()]), ts.flat[: ts.n_params])
    sgd = TrainState(build_model(SPEC, "tiny"), 1e-3, optimizer=OptimizerSpec("sgd", momentum=0.5))
    with pytest.raises(ValueError, match="another optimizer"):
        sgd.load(ts.snapshot())


def test_sharded_adamw_on_one_rank_is_torch_adamw():
    from mpi4py import MPI

    from hbl_mpi.runtime.grad_sync import GroupComm

    torch.manual_seed(0)
    x = (torch.randn(16, 12), torch.randn(16, 9))
    opt = OptimizerSpec("adamw", weight_decay=0.05)
    plain = TrainState(build_model([12, 9], "tiny"), 1e-3, optimizer=opt)
    shard = TrainState(build_model([12, 9], "tiny"), 1e-3, optimizer=opt)
    shard.load(plain.snapshot())
    sync = GroupComm(MPI.COMM_SELF).gradient_sync(shard, bucket_bytes=256, first_bucket_bytes=64)
    for _ in range(3):
        for ts in (plain, shard):
            ts.zero_grad()
            ts.forward(*x).square().mean().backward()
        plain.optimizer_step()
        sync.step()
    sync.gather_state()
    assert shard.step == plain.step == 3
    assert torch.allclose(shard.flat, plain.flat, rtol=1e-6, atol=1e-9)
    sgd = TrainState(build_model([12, 9], "tiny"), 1e-3, optimizer=OptimizerSpec("sgd", momentum=0.5))
    with pytest.raises(ValueError, match="Adam and AdamW"):
        GroupComm(MPI.COMM_SELF).gradient_sync(sgd)
