"""FLOP efficiency of a training step per model: achieved FLOP/s against this machine's
measured matmul peak (``bench/train.py --flops``; ``bench/gpu_check.sh`` on a GPU).

* Achieved: the FLOPs of one training step (forward + backward, counted by
  ``torch.utils.flop_counter.FlopCounterMode``: matmuls and convolutions, the work that
  dominates these models; elementwise ops and the optimizer step are not counted, so the
  figure is a slight under-count) divided by the fastest wall time of a whole step
  (forward, backward, optimizer step on the flat buffer, as ``TrainState`` runs it).
* Peak: the fastest FLOP/s of a large float32 ``torch.matmul`` (2 n^3 FLOPs) with the same
  thread count on the same device, sampled before and after every model.

Best-of on both sides because the host may be shared: other processes only ever slow a
sample down, so the fastest is the least disturbed estimate of each (medians are reported
too). On a host loaded by others the ratio still moves between runs; compare runs, not
single figures.

The ratio says how far the trainer's step is from the machine's dense-matmul limit; it is
a benchmark, not a test. Inputs are random tensors at the given widths (the data path is
``bench/train.py``'s other measurement).
"""

from __future__ import annotations

import statistics
import time

import torch

MODELS = {
    "uno": ("{preset}", {}),
    "pathway": ("hbl_mpi.models.pathway:build", {"preset": "{preset}"}),
    "smiles_cnn": ("hbl_mpi.models.smiles_cnn:build", {"preset": "{preset}"}),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(n: int, device: torch.device, reps: int = 5) -> dict:
    """Median FLOP/s of an n x n float32 matmul (after one warm-up)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    torch.matmul(a, b)
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        _sync(device)
        times.append(time.perf_counter() - t0)
    t = min(times)
    return {"n": n, "seconds": t, "flops_per_s": 2.0 * n ** 3 / t,
            "median_flops_per_s": 2.0 * n ** 3 / statistics.median(times)}


def _source(name: str):
    from hbl_mpi.models.plugin import resolve

    kind, _, preset = name.partition(":")
    if kind not in MODELS:
        raise SystemExit(f"--flops {name!r}: choose from {', '.join(MODELS)} (as NAME:PRESET)")
    spec, params = MODELS[kind]
    preset = preset or "small"
    return resolve(spec.format(preset=preset), {k: v.format(preset=preset) for k, v in params.items()})


def step_flops(name: str, widths: tuple[int, ...], smiles_len: int, batch: int, steps: int,
               device: torch.device, seed: int = 0) -> dict:
    """One model's counted FLOPs per training step, its median step time and FLOP/s."""
    from torch.utils.flop_counter import FlopCounterMode

    from hbl_mpi.data.smiles import ALPHABET, GROUP
    from hbl_mpi.train.flat_state import TrainState
    from hbl_mpi.uno import InputSpec

    groups = [("cell.rnaseq", widths[0])] + [(f"drug.input{i}", w) for i, w in enumerate(widths[1:])]
    if name.startswith("smiles_cnn"):
        groups.append((GROUP, smiles_len * len(ALPHABET)))
    inputs = InputSpec(tuple(groups))
    torch.manual_seed(seed)
    source = _source(name)
    ts = TrainState(source.build(inputs), 1e-3, device)
    xs = [torch.randn(batch, w, device=device) for _, w in groups]
    y = torch.randn(batch, device=device)

    def step() -> None:
        ts.zero_grad()
        ((ts.forward(*xs) - y).square().sum() / batch).backward()
        ts.optimizer_step()

    with FlopCounterMode(display=False) as counter:
        ts.zero_grad()
        ((ts.forward(*xs) - y).square().sum() / batch).backward()
    flops = counter.get_total_flops()
    step()  # warm-up
    _sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    t = min(times)
    return {"model": source.name, "parameters": ts.n_params, "flops_per_step": int(flops),
            "step_s": t, "flops_per_s": flops / t, "median_step_s": statistics.median(times)}


def measure(names: list[str], widths: tuple[int, ...], smiles_len: int, batch: int, steps: int,
            threads: int, device: str = "cpu", matmul_n: int = 2048, rows_per_epoch: int = 0) -> dict:
    """Every model's step FLOP/s and its ratio to the matmul peak; ``rows_per_epoch`` > 0 adds
    an epoch time estimated as step time x steps per epoch (no validation)."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    peaks = [matmul_peak(matmul_n, dev)]
    models = {}
    for name in names:
        models[name] = step_flops(name, widths, smiles_len, batch, steps, dev)
        peaks.append(matmul_peak(matmul_n, dev))
    peak = max(peaks, key=lambda p: p["flops_per_s"])
    peak["samples_flops_per_s"] = [p["flops_per_s"] for p in peaks]
    for r in models.values():
        r["ratio_to_matmul_peak"] = r["flops_per_s"] / peak["flops_per_s"]
        if rows_per_epoch:
            r["epoch_s_from_steps"] = r["step_s"] * -(-rows_per_epoch // batch)
    return {"device": str(dev), "threads": threads, "batch": batch, "widths": list(widths),
            "smiles_len": smiles_len, "matmul_peak": peak, "models": models}
