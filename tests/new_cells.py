"""The cells users pick haste for (issue 16), written out a second time for the tests: each one's step in
plain PyTorch from its equations (docs/design.md section 4), independent of fusedrnn.reference (the layer
norm is torch.nn.functional.layer_norm here, written out there), and the loops that run a module's layers
and directions with them.

A step reads a layer-direction's parameters by the names the module registers them under (without the
``_l{k}[_reverse]`` suffix), so it also checks the parameter layout: ``step(x_t, h, c, p) -> (h', c')``.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

import fusedrnn

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


def direction_params(module, layer: int, direction: int) -> Params:
    """One layer-direction's parameters of a stacked module, by their names without the suffix."""
    suffix = f"_l{layer}" + ("_reverse" if direction else "")
    return {name[: -len(suffix)]: getattr(module, name) for name in module._flat_weights_names
            if name.endswith(suffix)}


def cell_params(cell) -> Params:
    return dict(cell.named_parameters())


def plain_loop(step, x, h, c, p: Params):
    """One layer-direction over time-major ``x`` [T, B, I], step by step."""
    outs = []
    for t in range(x.shape[0]):
        h, c = step(x[t], h, c, p)
        outs.append(h)
    return torch.stack(outs), h, c


def plain_stack(module, step, x, states: Optional[Tuple[torch.Tensor, ...]], has_c: bool):
    """What ``module`` computes for time-major ``x`` [T, B, I] (every sequence T long): (out, h_n, c_n or None)."""
    directions = 2 if module.bidirectional else 1
    B, H = x.shape[1], module.hidden_size
    if states is None:
        states = tuple(x.new_zeros(module.num_layers * directions, B, H) for _ in range(2 if has_c else 1))
    layer_input, h_n, c_n = x, [], []
    for layer in range(module.num_layers):
        outputs = []
        for d in range(directions):
            index = layer * directions + d
            seq = layer_input.flip(0) if d else layer_input
            out, h, c = plain_loop(step, seq, states[0][index], states[1][index] if has_c else None,
                                   direction_params(module, layer, d))
            outputs.append(out.flip(0) if d else out)
            h_n.append(h)
            c_n.append(c)
        layer_input = torch.cat(outputs, dim=-1)
    return layer_input, torch.stack(h_n), (torch.stack(c_n) if has_c else None)
