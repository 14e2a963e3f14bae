"""Weights written behind autograd's back must never be read stale by the ``cpu`` backend.

The fused strategies pack ``W_hh`` (``W_hh^T`` in the backward; ``W_ih`` too
when folded; ``W_hr`` with a projection; the gate-row views of ``W_hh`` for GRU
reset_before) into panels.  A tensor's version counter misses many ordinary
writes: through ``.data`` (manual SGD), through ``.numpy()``, through a flat
buffer that ``param.data`` is a view of, through another tensor sharing the
storage, and from another process (Hogwild, ``share_memory()``).  So the
panels are packed in every call, never kept across calls (csrc/cpu/
recurrent_product.h); each test here first runs the module (so that any
cross-call reuse would have something to reuse), writes the weights one of
those ways, and compares the next results with an oracle built from the
weights' current values: torch.nn where it has the cell, else the reference
backend, both in float64 (float32 tolerance of fusedrnn.testing, 1e-5 of the
largest magnitude).
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import fusedrnn
import fusedrnn.testing as ft
from fusedrnn import backends

REQUIRED = os.environ.get("FUSEDRNN_REQUIRE_EXTENSION") == "1"
_WHY = backends.unavailable_reason("cpu")
if _WHY is not None and not REQUIRED:
    pytest.skip(f"the fused CPU kernels are not built in this checkout: {_WHY}", allow_module_level=True)

CPU = backends.get("cpu")
T, B, I, H, P = 5, 4, 6, 20, 7
STRATEGIES = ("fused", "folded", "gemm")  # folded falls back to fused for the GRU (cpu.py)

#: name -> (fusedrnn class, constructor extras, torch.nn twin or None where torch has no such cell)
VARIANTS = {
    "lstm": (fusedrnn.LSTM, {}, lambda: nn.LSTM(I, H)),
    "lstm-proj": (fusedrnn.LSTM, {"proj_size": P}, lambda: nn.LSTM(I, H, proj_size=P)),
    "lstm-peephole": (fusedrnn.LSTM, {"peephole": True}, None),
    "gru": (fusedrnn.GRU, {}, lambda: nn.GRU(I, H)),
    "gru-reset-before": (fusedrnn.GRU, {"reset_after": False}, None),
    "rnn-tanh": (fusedrnn.RNN, {"nonlinearity": "tanh"}, lambda: nn.RNN(I, H, nonlinearity="tanh")),
    "rnn-relu": (fusedrnn.RNN, {"nonlinearity": "relu"}, lambda: nn.RNN(I, H, nonlinearity="relu")),
}


def build(variant: str, backend: str = "cpu") -> nn.Module:
    cls, extras, _ = VARIANTS[variant]
    return cls(I, H, backend=backend, **extras)


def oracle(variant: str, module: nn.Module) -> nn.Module:
    """A float64 module computing ``variant`` on ``module``'s current weight values."""
    twin = VARIANTS[variant][2]
    ref = twin() if twin is not None else build(variant, backend="reference")
    ref.load_state_dict({k: v.detach().clone() for k, v in module.state_dict().items()})
    return ref.double()


def assert_matches(variant: str, module: nn.Module, x: torch.Tensor, what: str) -> None:
    """``module``'s outputs and final states on ``x`` equal the oracle's on the same weights."""
    with torch.no_grad():
        got = module(x)
        want = oracle(variant, module)(x.double())
    flat = lambda r: [r[0], *(r[1] if isinstance(r[1], tuple) else (r[1],))]  # noqa: E731
    for name, a, b in zip(("out", "h_n", "c_n"), flat(got), flat(want)):
        _, rel = ft.error(a, b)
        assert rel <= ft.tolerance(torch.float32), f"{what}: {name} relative error {rel:.2e} (stale weights?)"


def rewrite(t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """New values for ``t`` (same shape), far from the old ones."""
    return torch.randn(t.shape, generator=g, dtype=t.dtype) * 0.4


PARAMS = [pytest.param(v, s, id=f"{v}-{s}") for v in VARIANTS for s in STRATEGIES]


@pytest.mark.parametrize("variant, strategy", PARAMS, indirect=["strategy"])
def test_manual_sgd_through_data(variant, strategy):
    """``p.data.add_(p.grad, alpha=-lr)``: the loss trajectory over several steps is torch.nn's (or the
    reference backend's) taking the same steps; the backward reads the updated weights too."""
    torch.manual_seed(0)
    module = build(variant)
    twin = oracle(variant, module)  # float64, same initial weights
    x = torch.randn(T, B, I)
    target = torch.randn(T, B, module.proj_size or H)
    lr = 0.5
    for step in range(4):
        losses = []
        for m, inp in ((module, x), (twin, x.double())):
            m.zero_grad()
            loss = ((m(inp)[0] - target.to(inp.dtype)) ** 2).mean()
            loss.backward()
            for p in m.parameters():
                p.data.add_(p.grad, alpha=-lr)  # a write the version counter does not see
            losses.append(loss.item())
        assert losses[0] == pytest.approx(losses[1], rel=1e-5), f"step {step}: loss {losses[0]} vs {losses[1]}"
    assert_matches(variant, module, x, "after the last step")


@pytest.mark.parametrize("variant, strategy", PARAMS, indirect=["strategy"])
def test_numpy_writes(variant, strategy):
    module = build(variant)
    x = torch.randn(T, B, I)
    assert_matches(variant, module, x, "before")
    g = torch.Generator().manual_seed(1)
    for p in module.parameters():
        p.detach().numpy()[...] = rewrite(p, g).numpy()
    assert_matches(variant, module, x, "after writing through .numpy()")


@pytest.mark.parametrize("variant, strategy", PARAMS, indirect=["strategy"])
def test_data_set_to_views_of_a_flat_buffer(variant, strategy):
    """``param.data = flat[a:b].view(...)`` (as flatten_parameters-style code does), then the buffer is
    updated: the parameters' own version counters never move."""
    module = build(variant)
    params = list(module.parameters())
    flat = torch.empty(sum(p.numel() for p in params))
    offset = 0
    for p in params:
        view = flat[offset:offset + p.numel()].view_as(p)
        view.copy_(p.detach())
        p.data = view
        offset += p.numel()
    x = torch.randn(T, B, I)
    assert_matches(variant, module, x, "before")
    flat.copy_(torch.randn(flat.shape, generator=torch.Generator().manual_seed(2)) * 0.4)
    assert_matches(variant, module, x, "after updating the flat buffer")


@pytest.mark.parametrize("variant, strategy", PARAMS, indirect=["strategy"])
def test_no_grad_copy_into_shared_storage(variant, strategy):
    """Another tensor on the same storage (``set_``), written under ``torch.no_grad()``."""
    module = build(variant)
    x = torch.randn(T, B, I)
    assert_matches(variant, module, x, "before")
    g = torch.Generator().manual_seed(3)
    for p in module.parameters():
        alias = torch.empty(0).set_(p.untyped_storage(), p.storage_offset(), p.shape, p.stride())
        with torch.no_grad():
            alias.copy_(rewrite(p, g))
    assert_matches(variant, module, x, "after copying into an alias of the storage")


#: every packed weight on its own: W_ih (packed when folded), W_hh (and its gate-row views for GRU
#: reset_before), W_hr with a projection
SINGLE = [pytest.param(v, name, s, id=f"{v}-{name}-{s}")
          for v, names in (("lstm", ("weight_ih_l0", "weight_hh_l0")),
                           ("lstm-proj", ("weight_ih_l0", "weight_hh_l0", "weight_hr_l0")),
                           ("gru-reset-before", ("weight_hh_l0",)),
                           ("rnn-tanh", ("weight_ih_l0", "weight_hh_l0")))
          for name in names for s in STRATEGIES]


@pytest.mark.parametrize("variant, name, strategy", SINGLE, indirect=["strategy"])
def test_each_packed_weight_written_alone(variant, name, strategy):
    module = build(variant)
    x = torch.randn(T, B, I)
    assert_matches(variant, module, x, "before")
    p = getattr(module, name)
    if variant == "gru-reset-before":
        # only the n gate's rows: the kernels pack them apart from the r, z rows
        p.data[2 * H:].mul_(-1.5)
    else:
        p.data.mul_(-1.5)
    assert_matches(variant, module, x, f"after writing {name}")


def _hogwild_child(modules, seed):
    """Runs in a spawned process: new values for every shared weight, written in place (this
    process's version counters only; the parent's never move)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                p.copy_(rewrite(p, g))


def test_hogwild_weights_written_by_another_process():
    """Two processes share modules' weights (``share_memory()``, spawn context); after the child
    rewrites them, the parent's next forward, with every strategy, computes with the new values."""
    variants = ("lstm", "lstm-proj", "gru-reset-before", "rnn-relu")
    modules = [build(v).share_memory() for v in variants]
    x = torch.randn(T, B, I)
    before = CPU.strategy
    try:
        for strategy in STRATEGIES:  # every strategy has run (and could have kept something) before
            CPU.strategy = strategy
            for v, m in zip(variants, modules):
                assert_matches(v, m, x, f"{strategy}, before")
        old = [p.detach().clone() for m in modules for p in m.parameters()]
        ctx = torch.multiprocessing.get_context("spawn")
        child = ctx.Process(target=_hogwild_child, args=(modules, 4))
        child.start()
        child.join(timeout=120)
        assert child.exitcode == 0, f"the child process failed (exit code {child.exitcode})"
        new = [p.detach() for m in modules for p in m.parameters()]
        assert all(not torch.equal(a, b) for a, b in zip(old, new)), "the child's writes are not visible"
        for strategy in STRATEGIES:
            CPU.strategy = strategy
            for v, m in zip(variants, modules):
                assert_matches(v, m, x, f"{strategy}, after the other process wrote the weights")
    finally:
        CPU.strategy = before
