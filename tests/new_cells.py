"""The cells users pick haste for (issue 16), written out a second time for the tests: each one's step in
plain PyTorch from its equations (docs/design.md section 4), independent of fusedrnn.reference (the layer
norm is torch.nn.functional.layer_norm here, written out there), and the loops that run a module's layers
and directions with them.

A step reads a layer-direction's parameters by the names the module registers them under (without the
``_l{k}[_reverse]`` suffix), so it also checks the parameter layout: ``step(x_t, h, c, p) -> (h', c')``.
"""

from __future__ import annotations

import warnings
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

import fusedrnn
import fusedrnn.testing as ft
from fusedrnn import backends, ops

Params = Dict[str, torch.Tensor]


def _bias(p: Params, name: str):
    return p[name] if p.get(name) is not None else 0


def indrnn_step(act: Callable) -> Callable:
    """h' = act(W_ih x + b_ih + u * h + b_hh), u = weight_hh [H] element-wise."""

    def step(x, h, c, p: Params):
        return act(x @ p["weight_ih"].t() + _bias(p, "bias_ih") + p["weight_hh"] * h + _bias(p, "bias_hh")), None

    return step


def layer_norm_lstm_step(x, h, c, p: Params):
    """haste's LayerNormLSTM in PyTorch's gate order: each pre-activation row (all four blocks) normalised with
    its gain, the new cell state normalised with gain and shift before tanh; torch.nn.functional.layer_norm."""
    G = p["weight_ih"].shape[0]
    xh = F.layer_norm(x @ p["weight_ih"].t(), (G,), weight=p["ln_weight_ih"]) + _bias(p, "bias_ih")
    hh = F.layer_norm(h @ p["weight_hh"].t(), (G,), weight=p["ln_weight_hh"]) + _bias(p, "bias_hh")
    i, f, g, o = (xh + hh).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    normalised = F.layer_norm(c, (c.shape[-1],), weight=p["ln_weight_c"], bias=p["ln_bias_c"])
    return torch.sigmoid(o) * torch.tanh(normalised), c


def layer_norm_gru_step(x, h, c, p: Params):
    """haste's LayerNormGRU in PyTorch's gate order (r, z, n) and convention h' = (1-z)*n + z*h."""
    G = p["weight_ih"].shape[0]
    x_r, x_z, x_n = (F.layer_norm(x @ p["weight_ih"].t(), (G,), weight=p["ln_weight_ih"])
                     + _bias(p, "bias_ih")).chunk(3, dim=-1)
    h_r, h_z, h_n = (F.layer_norm(h @ p["weight_hh"].t(), (G,), weight=p["ln_weight_hh"])
                     + _bias(p, "bias_hh")).chunk(3, dim=-1)
    r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h, None


#: name -> (module builder(input_size, hidden_size, **kwargs), cell builder or None, plain step, has a cell state)
KINDS: Dict[str, Tuple[Callable, Optional[Callable], Callable, bool]] = {
    "indrnn-relu": (lambda i, h, **kw: fusedrnn.IndRNN(i, h, nonlinearity="relu", **kw),
                    lambda i, h, **kw: fusedrnn.IndRNNCell(i, h, nonlinearity="relu", **kw),
                    indrnn_step(torch.relu), False),
    "indrnn-tanh": (lambda i, h, **kw: fusedrnn.IndRNN(i, h, nonlinearity="tanh", **kw),
                    lambda i, h, **kw: fusedrnn.IndRNNCell(i, h, nonlinearity="tanh", **kw),
                    indrnn_step(torch.tanh), False),
    "layer-norm-lstm": (fusedrnn.LayerNormLSTM, fusedrnn.LayerNormLSTMCell, layer_norm_lstm_step, True),
    "layer-norm-gru": (fusedrnn.LayerNormGRU, fusedrnn.LayerNormGRUCell, layer_norm_gru_step, False),
}


def lstm_step(x, h, c, p: Params):
    """torch.nn.LSTM's step (gate blocks i, f, g, o; with ``weight_hr``, h' projected), for zoneout's tests."""
    i, f, g, o = (x @ p["weight_ih"].t() + _bias(p, "bias_ih") + h @ p["weight_hh"].t()
                  + _bias(p, "bias_hh")).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return (h if p.get("weight_hr") is None else h @ p["weight_hr"].t()), c


def gru_step(reset_after: bool) -> Callable:
    """torch.nn.GRU's step (reset_after; blocks r, z, n, h' = (1-z)*n + z*h), or Cho et al.'s (r*h before W_hn)."""

    def step(x, h, c, p: Params):
        x_r, x_z, x_n = (x @ p["weight_ih"].t() + _bias(p, "bias_ih")).chunk(3, dim=-1)
        w_r, w_z, w_n = p["weight_hh"].chunk(3)
        b_r, b_z, b_n = p["bias_hh"].chunk(3) if p.get("bias_hh") is not None else (0, 0, 0)
        r, z = torch.sigmoid(x_r + h @ w_r.t() + b_r), torch.sigmoid(x_z + h @ w_z.t() + b_z)
        n = torch.tanh(x_n + r * (h @ w_n.t() + b_n)) if reset_after else torch.tanh(x_n + (r * h) @ w_n.t() + b_n)
        return (1 - z) * n + z * h, None

    return step


#: the modules taking ``zoneout``: name -> (module builder(input_size, hidden_size, **kwargs), plain step, has c)
ZONEOUT_KINDS: Dict[str, Tuple[Callable, Callable, bool]] = {
    "lstm": (fusedrnn.LSTM, lstm_step, True),
    "lstm-proj": (lambda i, h, **kw: fusedrnn.LSTM(i, h, proj_size=h - 1, **kw), lstm_step, True),
    "gru": (fusedrnn.GRU, gru_step(True), False),
    "gru-reset-before": (lambda i, h, **kw: fusedrnn.GRU(i, h, reset_after=False, **kw), gru_step(False), False),
    **{name: (build, step, has_c) for name, (build, _, step, has_c) in KINDS.items()},
}


def direction_params(module, layer: int, direction: int) -> Params:
    """One layer-direction's parameters of a stacked module, by their names without the suffix."""
    suffix = f"_l{layer}" + ("_reverse" if direction else "")
    return {name[: -len(suffix)]: getattr(module, name) for name in module._flat_weights_names
            if name.endswith(suffix)}


def cell_params(cell) -> Params:
    return dict(cell.named_parameters())


def assert_same_values_and_gradients(mine, theirs, leaves, rtol=1e-12):
    """Outputs equal, and so the gradients of one random projection of them w.r.t. ``leaves``."""
    mine = [t for t in mine if t is not None]
    theirs = [t for t in theirs if t is not None]
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol)
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in mine]
    grads_mine = torch.autograd.grad(sum((t * w).sum() for t, w in zip(mine, weights)), leaves)
    grads_theirs = torch.autograd.grad(sum((t * w).sum() for t, w in zip(theirs, weights)), leaves)
    for a, b in zip(grads_mine, grads_theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def assert_auto_falls_back_once(module, x) -> None:
    """Two calls of ``module`` (backend "auto", a cell without kernels here): the first warns that it fell
    back to the reference backend, naming why where the cpu backend exists, the second says nothing."""
    for call in range(2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module(x)
        fallbacks = [str(w.message) for w in caught if "using backend 'reference'" in str(w.message)]
        assert len(fallbacks) == (1 if call == 0 else 0), fallbacks
        if call == 0 and "cpu" in backends.available():
            assert f"no kernels for the {module.cell} cell" in fallbacks[0]


def plain_loop(step, x, h, c, p: Params, zoneout: float = 0.0, masks: Optional[torch.Tensor] = None):
    """One layer-direction over time-major ``x`` [T, B, I], step by step.  With ``zoneout``, haste's zoneout
    of h after each step: by ``masks`` [T, B, H_out] (1: the new value) if given (training), else its
    expectation (evaluation)."""
    outs = []
    for t in range(x.shape[0]):
        h_prev = h
        h, c = step(x[t], h, c, p)
        if masks is not None:
            h = torch.where(masks[t] == 1, h, h_prev)
        elif zoneout:
            h = zoneout * h_prev + (1 - zoneout) * h
        outs.append(h)
    return torch.stack(outs), h, c


def plain_stack(module, step, x, states: Optional[Tuple[torch.Tensor, ...]], has_c: bool, zoneout: float = 0.0,
                masks=None):
    """What ``module`` computes for time-major ``x`` [T, B, I] (every sequence T long): (out, h_n, c_n or None).
    ``zoneout``, ``masks`` (one [T, B, H_out] per layer-direction, in time order): :func:`plain_loop`'s."""
    directions = 2 if module.bidirectional else 1
    B, H = x.shape[1], module.hidden_size
    hout = getattr(module, "proj_size", 0) or H
    if states is None:
        sizes = (hout, H) if has_c else (hout,)
        states = tuple(x.new_zeros(module.num_layers * directions, B, size) for size in sizes)
    layer_input, h_n, c_n = x, [], []
    for layer in range(module.num_layers):
        outputs = []
        for d in range(directions):
            index = layer * directions + d
            seq = layer_input.flip(0) if d else layer_input
            mask = None if masks is None else (masks[index].flip(0) if d else masks[index])
            out, h, c = plain_loop(step, seq, states[0][index], states[1][index] if has_c else None,
                                   direction_params(module, layer, d), zoneout, mask)
            outputs.append(out.flip(0) if d else out)
            h_n.append(h)
            c_n.append(c)
        layer_input = torch.cat(outputs, dim=-1)
    return layer_input, torch.stack(h_n), (torch.stack(c_n) if has_c else None)


def gradcheck_graph_op(variant: str) -> None:
    """float64 gradcheck of a family's graph op (defined from Python) and its autograd formula, on the
    reference backend: a packed, reversed case of ``variant`` (a :data:`fusedrnn.testing.VARIANTS` name)."""
    case = ft.layer_case(ft.Case(variant, ft.Shape(T=3, B=3, I=2, H=3), "packed-reverse"))
    op = ops.forward_op(case.cell.family)
    inputs = [None if t is None else t.clone().requires_grad_() for t in case.inputs()]
    present = [i for i, t in enumerate(inputs) if t is not None]

    def run(*leaves):
        args = list(inputs)
        for i, t in zip(present, leaves):
            args[i] = t
        out, h_n, c_n, _ = op(*args, case.batch_sizes, case.reverse, case.cell.mode, "reference")
        return out, h_n, c_n

    assert torch.autograd.gradcheck(run, [inputs[i] for i in present])
