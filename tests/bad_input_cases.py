"""The bad-input matrix: malformed calls of fusedrnn next to the same calls of torch.nn.

Each :class:`Case` is a function of a library handle ``L`` that builds and
calls a module (or the functional API) and returns what came out.  ``L`` is
torch.nn or fusedrnn with one backend; the modules it builds get the same
deterministic weights and the case's inputs come from a generator seeded by
the case's name, so both libraries see the same numbers.

The rules (applied by tests/test_bad_inputs.py):

* torch.nn raises: fusedrnn raises the same exception type, and its message
  matches the case's ``keyword`` (a regex naming the offending argument);
* torch.nn crashes, hangs or returns garbage (the case is marked ``clearer``
  with the reason): fusedrnn raises one of ``raises``, message matching ``keyword``;
* torch.nn returns: fusedrnn returns the same result (outputs and gradients, close);
* ``torch_twin=False`` (fusedrnn's own API or extras): fusedrnn raises one of ``raises``, ``keyword``.

Never a crash, a hang, or a wrong answer.

Run as a script, this module is the worker the tests start in a subprocess:
it reads ``{"pairs": [[case, implementation], ...], "torch_crashed": [...]}``
as JSON on stdin and appends one JSON line per event to the file named by
``--out`` (``start`` before each call, ``done`` with the outcome after), so
the parent can name the call a crash or hang interrupted.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import re
import sys
import warnings
import zlib
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

I, H, B, T = 3, 4, 2, 5
P = 2  # proj_size where one is used
f32, f64 = torch.float32, torch.float64
NAN, INF = float("nan"), float("inf")

TORCH = "torch.nn"
#: the fusedrnn implementations the matrix runs (backends that run on any machine with the extension)
FUSED = ("fusedrnn:reference", "fusedrnn:cpu")


# ----------------------------------------------------------------------------
# The library handle and helpers the cases use
# ----------------------------------------------------------------------------


class Lib:
    """``L.LSTM(...)`` builds torch.nn's or fusedrnn's module (with the implementation's backend),
    its parameters filled deterministically from their names; ``L.is_torch``; ``L.functional``."""

    def __init__(self, implementation: str):
        self.implementation = implementation
        self.is_torch = implementation == TORCH
        self.backend = None if self.is_torch else implementation.split(":", 1)[1]

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if name == "functional":
            import fusedrnn.functional

            return fusedrnn.functional
        import fusedrnn

        cls = getattr(nn if self.is_torch else fusedrnn, name)

        def build(*args, **kwargs):
            if not self.is_torch:
                kwargs.setdefault("backend", self.backend)
            with torch.random.fork_rng(devices=[]):  # construction draws nothing from the case's generator
                module = cls(*args, **kwargs)
            fill(module)
            return module

        return build

    def functional_layer(self, name: str):
        """fusedrnn.functional.<name> with this implementation's backend (fusedrnn only)."""
        import functools

        import fusedrnn.functional

        return functools.partial(getattr(fusedrnn.functional, name), backend=self.backend)


def fill(module: nn.Module) -> None:
    """Every floating parameter from a generator seeded by its name (same values in both libraries)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.device.type == "meta" or not (p.is_floating_point() or p.is_complex()):
                continue
            g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            scale = 1.0 / max(1, p.shape[-1] if p.dim() else 1) ** 0.5
            p.copy_(((torch.rand(p.shape, generator=g, dtype=f64) * 2 - 1) * scale).to(p.dtype))


_generator = torch.Generator()


def reset(name: str) -> None:
    _generator.manual_seed(zlib.crc32(name.encode()))


def rand(*shape, dtype=f32, grad=False) -> torch.Tensor:
    """Uniform in +-1 from the case's generator; ``grad``: a leaf that requires grad."""
    t = (torch.rand(*shape, generator=_generator, dtype=f64) * 2 - 1).to(dtype)
    return t.requires_grad_() if grad else t


def meta(*shape, dtype=f32) -> torch.Tensor:
    return torch.empty(*shape, dtype=dtype, device="meta")


def with_value(t: torch.Tensor, index, value) -> torch.Tensor:
    t = t.detach().clone()
    t[index] = value
    return t


def fwd(module, *args, leaves=()) -> dict:
    """Call ``module``, then (when its outputs need grad) differentiate a fixed projection of every
    floating output with respect to ``leaves`` and every parameter; outputs and gradients."""
    out = module(*args)
    tensors = [t for t in flatten(out) if torch.is_tensor(t) and t.is_floating_point() and t.requires_grad]
    if not tensors or any(t.device.type == "meta" for t in tensors):
        return {"out": out}
    params = [p for _, p in module.named_parameters() if p.requires_grad]
    wrt = list(leaves) + params
    loss = sum((t * upstream(t)).sum() for t in tensors)
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    return {"out": out, "grads": list(grads)}


def upstream(t: torch.Tensor) -> torch.Tensor:
    """A fixed, non-constant upstream gradient (no generator: it must not shift the inputs' draws)."""
    return torch.cos(torch.arange(t.numel(), dtype=f64) * 0.7).reshape(t.shape).to(t.dtype)


def packed(x, lengths, batch_first=False, enforce_sorted=False):
    return pack_padded_sequence(x, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=enforce_sorted)


def set_param(module, name, value, as_data=False):
    """``module.<name> = nn.Parameter(value)`` (or ``.data = value``); returns the module."""
    if as_data:
        getattr(module, name).data = value
    else:
        setattr(module, name, nn.Parameter(value))
    return module


# ----------------------------------------------------------------------------
# The cases
# ----------------------------------------------------------------------------

#: what fusedrnn may raise where torch.nn gives no exception to match
CLEAR = (RuntimeError, ValueError)
CLEAR_OR_TYPE = (RuntimeError, ValueError, TypeError)


@dataclass
class Case:
    name: str
    group: str
    call: Callable[[Lib], object]
    #: regex (case-insensitive) that fusedrnn's message must match when it raises
    keyword: Optional[str] = None
    #: why torch.nn's behaviour here is a crash or garbage ('' where torch.nn behaves)
    clearer: str = ""
    #: accepted exception types where torch.nn gives none to match (clearer cases, torch_twin=False)
    raises: Tuple[type, ...] = CLEAR
    #: False: no torch.nn counterpart (fusedrnn's functional API and extras)
    torch_twin: bool = True


CASES: Dict[str, Case] = {}


def add(group, name, call, keyword=None, clearer="", raises=CLEAR, torch_twin=True):
    if name in CASES:
        raise ValueError(f"duplicate case {name}")
    CASES[name] = Case(name, group, call, keyword, clearer, raises, torch_twin)


def x3(dtype=f32, grad=True):
    return rand(T, B, I, dtype=dtype, grad=grad)


# -- construction -------------------------------------------------------------

G = "construct"
add(G, "input_size_negative", lambda L: L.LSTM(-1, H), "input_size")
add(G, "input_size_zero", lambda L: L.GRU(0, H), "input_size")
add(G, "input_size_float", lambda L: L.LSTM(3.0, H), "input_size")
add(G, "input_size_str", lambda L: L.RNN("3", H), "input_size")
add(G, "input_size_none", lambda L: L.LSTM(None, H), "input_size")
add(G, "hidden_size_negative", lambda L: L.RNN(I, -4), "hidden_size")
add(G, "hidden_size_zero", lambda L: L.LSTM(I, 0), "hidden_size")
add(G, "hidden_size_float", lambda L: L.GRU(I, 4.5), "hidden_size")
add(G, "num_layers_zero", lambda L: L.LSTM(I, H, 0), "num_layers")
add(G, "num_layers_negative", lambda L: L.GRU(I, H, -1), "num_layers")
add(G, "num_layers_float", lambda L: L.RNN(I, H, 2.0), "num_layers|float")
add(G, "num_layers_str", lambda L: L.LSTM(I, H, "2"), "num_layers")
add(G, "dropout_negative", lambda L: L.LSTM(I, H, 2, dropout=-0.1), "dropout")
add(G, "dropout_above_one", lambda L: L.GRU(I, H, 2, dropout=1.5), "dropout")
add(G, "dropout_str", lambda L: L.RNN(I, H, 2, dropout="0.5"), "dropout")
add(G, "dropout_nan", lambda L: L.LSTM(I, H, 2, dropout=NAN), "dropout")
add(G, "dropout_bool", lambda L: L.GRU(I, H, 2, dropout=True), "dropout")
add(G, "bias_int", lambda L: L.LSTM(I, H, bias=1), "bias")
add(G, "batch_first_str", lambda L: L.GRU(I, H, batch_first="yes"), "batch_first")
# torch.nn accepts any truthy bidirectional and keeps it as given: a success case
add(G, "bidirectional_int", lambda L: L.RNN(I, H, bidirectional=1))
add(G, "proj_size_negative", lambda L: L.LSTM(I, H, proj_size=-1), "proj_size")
add(G, "proj_size_equal_hidden", lambda L: L.LSTM(I, H, proj_size=H), "proj_size")
add(G, "proj_size_above_hidden", lambda L: L.LSTM(I, H, proj_size=H + 3), "proj_size")
add(G, "proj_size_float", lambda L: L.LSTM(I, H, proj_size=1.5), "proj_size|float")
add(G, "proj_size_on_gru", lambda L: L.GRU(I, H, proj_size=2), "proj_size")
add(G, "proj_size_zero_on_rnn", lambda L: L.RNN(I, H, proj_size=0), "proj_size")
add(G, "nonlinearity_unknown", lambda L: L.RNN(I, H, nonlinearity="sigmoid"), "nonlinearity")
add(G, "nonlinearity_none", lambda L: L.RNN(I, H, nonlinearity=None), "nonlinearity")
add(G, "unexpected_keyword", lambda L: L.LSTM(I, H, foo=1), "foo")
add(G, "dtype_integer", lambda L: L.LSTM(I, H, dtype=torch.int64), "dtype|floating|int")
add(G, "dtype_complex", lambda L: L.GRU(I, H, dtype=torch.complex64))  # torch.nn builds complex parameters
add(G, "device_meta", lambda L: L.LSTM(I, H, 2, bidirectional=True, device="meta"))
add(G, "cell_hidden_size_negative", lambda L: L.LSTMCell(I, -2), "hidden_size|negative")
add(G, "cell_input_size_negative", lambda L: L.GRUCell(-1, H), "input_size|negative")
add(G, "cell_hidden_size_float", lambda L: L.GRUCell(I, 4.5), "hidden_size|float")
add(G, "cell_unexpected_keyword", lambda L: L.RNNCell(I, H, proj_size=2), "proj_size")
add(G, "cell_bias_int", lambda L: L.GRUCell(I, H, bias=1))  # torch.nn's cells take any truthy bias

# -- the input of a stacked module --------------------------------------------

G = "input"
add(G, "input_rank1", lambda L: L.LSTM(I, H)(rand(I)), "input")
add(G, "input_rank4", lambda L: L.GRU(I, H)(rand(T, B, I, 1)), "input")
add(G, "input_scalar", lambda L: L.RNN(I, H)(torch.tensor(1.0)), "input")
add(G, "input_size_mismatch", lambda L: L.LSTM(I, H)(rand(T, B, I + 1)), "input_size")
add(G, "input_size_mismatch_batch_first", lambda L: L.GRU(I, H, batch_first=True)(rand(B, T, I + 2)), "input_size")
add(G, "input_size_mismatch_unbatched", lambda L: L.RNN(I, H)(rand(T, I + 1)), "input_size")
add(G, "input_int64", lambda L: L.LSTM(I, H)(torch.ones(T, B, I, dtype=torch.int64)), "dtype")
add(G, "input_int32", lambda L: L.GRU(I, H)(torch.ones(T, B, I, dtype=torch.int32)), "dtype")
add(G, "input_bool", lambda L: L.RNN(I, H)(torch.ones(T, B, I, dtype=torch.bool)), "dtype")
add(G, "input_complex", lambda L: L.LSTM(I, H)(rand(T, B, I).to(torch.complex64)), "dtype")
add(G, "input_float16", lambda L: L.GRU(I, H)(rand(T, B, I, dtype=torch.float16)), "dtype")
add(G, "input_float64", lambda L: L.RNN(I, H)(rand(T, B, I, dtype=f64)), "dtype")
add(G, "input_float32_module_float64", lambda L: L.LSTM(I, H, dtype=f64)(rand(T, B, I)), "dtype")
add(G, "input_list", lambda L: L.LSTM(I, H)([[1.0] * I] * T), "list|input")
add(G, "input_none", lambda L: L.GRU(I, H)(None), "None|input")
add(G, "input_meta_module_cpu", lambda L: L.LSTM(I, H)(meta(T, B, I)), "device|meta")
add(G, "input_cpu_module_meta", lambda L: L.GRU(I, H, device="meta")(rand(T, B, I)), "device|meta")
add(G, "all_on_meta", lambda L: L.LSTM(I, H, 2, bidirectional=True, device="meta")(meta(T, B, I)))
add(G, "all_on_meta_packed_shape", lambda L: L.GRU(I, H, device="meta")(meta(T, I)))
add(G, "zero_length", lambda L: L.LSTM(I, H)(rand(0, B, I)), "length|sequence|T")
add(G, "zero_length_unbatched", lambda L: L.GRU(I, H)(rand(0, I)), "length|sequence|T")
add(G, "empty_batch", lambda L: fwd(L.LSTM(I, H, 2, bidirectional=True), rand(T, 0, I)))
add(G, "empty_batch_with_state", lambda L: fwd(L.GRU(I, H), rand(T, 0, I), rand(1, 0, H)))


def _transposed_input(L):
    x = rand(B, T, I, grad=True)
    return fwd(L.LSTM(I, H), x.transpose(0, 1), leaves=[x])


def _strided_input(L):
    x = rand(2 * T, B, 2 * I, grad=True)
    return fwd(L.GRU(I, H, bidirectional=True), x[::2, :, ::2], leaves=[x])


def _expanded_input(L):
    x = rand(1, 1, I, grad=True)
    return fwd(L.RNN(I, H, 2), x.expand(T, B, I), leaves=[x])


def _expanded_input_batch_first(L):
    x = rand(B, 1, I, grad=True)
    return fwd(L.LSTM(I, H, batch_first=True, proj_size=P), x.expand(B, T, I), leaves=[x])


def _transposed_unbatched(L):
    x = rand(I, T, grad=True)
    return fwd(L.GRU(I, H), x.t(), leaves=[x])


def _expanded_packed(L):
    x = rand(1, B, I, grad=True)
    return fwd(L.LSTM(I, H, bidirectional=True), packed(x.expand(T, B, I), [3, 5]), leaves=[x])


add(G, "input_transposed", _transposed_input)
add(G, "input_strided", _strided_input)
add(G, "input_expanded_stride0", _expanded_input)
add(G, "input_expanded_batch_first", _expanded_input_batch_first)
add(G, "input_transposed_unbatched", _transposed_unbatched)
add(G, "input_expanded_packed", _expanded_packed)

# -- non-finite values: propagate exactly as torch.nn does ----------------------

G = "values"
for _kind, _ctor in [("lstm", lambda L: L.LSTM(I, H)), ("gru", lambda L: L.GRU(I, H)),
                     ("rnn_tanh", lambda L: L.RNN(I, H)), ("rnn_relu", lambda L: L.RNN(I, H, nonlinearity="relu")),
                     ("lstm_proj_bi", lambda L: L.LSTM(I, H, bidirectional=True, proj_size=P))]:
    for _what, _value in [("nan", NAN), ("inf", INF), ("neg_inf", -INF)]:
        add(G, f"{_kind}_input_{_what}",
            lambda L, c=_ctor, v=_value: fwd(c(L), with_value(rand(T, B, I), (2, 1, 0), v).requires_grad_()))
    add(G, f"{_kind}_input_huge", lambda L, c=_ctor: fwd(c(L), (rand(T, B, I) * 1e30).requires_grad_()))
add(G, "rnn_relu_all_nan", lambda L: fwd(L.RNN(I, H, nonlinearity="relu"), torch.full((T, B, I), NAN)))
add(G, "gru_state_nan", lambda L: fwd(L.GRU(I, H), rand(T, B, I), with_value(rand(1, B, H), (0, 0, 1), NAN)))
add(G, "lstm_cell_state_inf",
    lambda L: fwd(L.LSTM(I, H), rand(T, B, I), (rand(1, B, H), with_value(rand(1, B, H), (0, 1, 2), INF))))
add(G, "rnn_relu_packed_nan",
    lambda L: fwd(L.RNN(I, H, nonlinearity="relu"), packed(with_value(rand(T, B, I), (0, 0, 0), NAN), [5, 2])))


def _nan_weight(L):
    m = L.LSTM(I, H)
    with torch.no_grad():
        m.weight_hh_l0[3, 1] = NAN
    return fwd(m, rand(T, B, I))


add(G, "lstm_weight_nan", _nan_weight)

# -- initial states -----------------------------------------------------------

G = "state"
add(G, "lstm_hx_tensor", lambda L: L.LSTM(I, H)(x3(), rand(1, B, H)), "hx|tuple|h_0|hidden")
add(G, "lstm_hx_stacked_tensor", lambda L: L.LSTM(I, H)(x3(), rand(2, 1, B, H)), "hx|tuple|h_0|hidden")
add(G, "lstm_hx_list", lambda L: fwd(L.LSTM(I, H), x3(), [rand(1, B, H), rand(1, B, H)]))
add(G, "lstm_hx_tuple1", lambda L: L.LSTM(I, H)(x3(), (rand(1, B, H),)), "hx|tuple|hidden|two")
add(G, "lstm_hx_tuple3", lambda L: L.LSTM(I, H)(x3(), (rand(1, B, H),) * 3), "hx|tuple|hidden|two")
add(G, "lstm_hx_c_none", lambda L: L.LSTM(I, H)(x3(), (rand(1, B, H), None)), "hx|cx|c_0|None|hidden")
add(G, "gru_hx_tuple", lambda L: L.GRU(I, H)(x3(), (rand(1, B, H),)), "hx|tuple|hidden")
add(G, "rnn_hx_list", lambda L: L.RNN(I, H)(x3(), [rand(1, B, H)]), "hx|list|hidden")
add(G, "hx_wrong_layers", lambda L: L.GRU(I, H, 2)(x3(), rand(1, B, H)), "hidden|hx")
add(G, "hx_wrong_directions", lambda L: L.RNN(I, H, bidirectional=True)(x3(), rand(1, B, H)), "hidden|hx")
add(G, "hx_wrong_batch", lambda L: L.GRU(I, H)(x3(), rand(1, B + 1, H)), "hidden|hx")
add(G, "hx_wrong_size", lambda L: L.RNN(I, H)(x3(), rand(1, B, H + 1)), "hidden|hx")
add(G, "lstm_c_wrong_size", lambda L: L.LSTM(I, H)(x3(), (rand(1, B, H), rand(1, B, H + 1))), r"hidden\[1\]|cx|c_0")
add(G, "lstm_proj_h_given_hidden_size", lambda L: L.LSTM(I, H, proj_size=P)(x3(), (rand(1, B, H), rand(1, B, H))),
    r"hidden\[0\]|hx|h_0")
add(G, "lstm_proj_c_given_proj_size", lambda L: L.LSTM(I, H, proj_size=P)(x3(), (rand(1, B, P), rand(1, B, P))),
    r"hidden\[1\]|cx|c_0")
add(G, "hx_2d_for_batched", lambda L: L.GRU(I, H)(x3(), rand(B, H)), "hx|hidden")
add(G, "hx_3d_for_unbatched", lambda L: L.RNN(I, H)(rand(T, I), rand(1, 1, H)), "hx|hidden")
add(G, "lstm_hx_mixed_dims", lambda L: L.LSTM(I, H)(x3(), (rand(1, B, H), rand(B, H))), "hx|cx")
add(G, "hx_unbatched_wrong_layers", lambda L: L.GRU(I, H, 2)(rand(T, I), rand(1, H)), "hidden|hx")
add(G, "hx_float64", lambda L: L.GRU(I, H)(x3(), rand(1, B, H, dtype=f64)), "hx|dtype")
add(G, "hx_int", lambda L: L.RNN(I, H)(x3(), torch.zeros(1, B, H, dtype=torch.int64)), "hx|dtype")
add(G, "lstm_c_float64", lambda L: L.LSTM(I, H)(x3(), (rand(1, B, H), rand(1, B, H, dtype=f64))), "cx|c_0|dtype")
add(G, "hx_complex", lambda L: L.GRU(I, H)(x3(), rand(1, B, H).to(torch.complex64)), "hx|dtype")
add(G, "hx_meta", lambda L: L.GRU(I, H)(x3(), meta(1, B, H)), "hx|device")
add(G, "lstm_c_meta", lambda L: L.LSTM(I, H)(x3(), (rand(1, B, H), meta(1, B, H))), "cx|c_0|device")
add(G, "packed_hx_wrong_batch", lambda L: fwd(L.GRU(I, H), packed(x3(), [5, 3]), rand(1, B + 1, H)), "hidden|hx",
    clearer="torch.nn reorders hx by sorted_indices before checking its size: the extra row is dropped silently")
add(G, "packed_hx_unbatched", lambda L: L.LSTM(I, H)(packed(x3(), [5, 3]), (rand(1, H), rand(1, H))), "hidden|hx")


def _transposed_state(L):
    h = rand(B, 2, H, grad=True)
    c = rand(2, H, B, grad=True)
    return fwd(L.LSTM(I, H, 2), x3(), (h.transpose(0, 1), c.permute(0, 2, 1)), leaves=[h, c])


def _expanded_state(L):
    h = rand(1, 1, H, grad=True)
    return fwd(L.GRU(I, H, 2, bidirectional=True), x3(), h.expand(4, B, H), leaves=[h])


def _expanded_state_packed(L):
    h, c = rand(1, B, P, grad=True), rand(1, 1, H, grad=True)
    return fwd(L.LSTM(I, H, proj_size=P), packed(x3(), [2, 5]), (h, c.expand(1, B, H)), leaves=[h, c])


def _strided_state_unbatched(L):
    h = rand(1, 2 * H, grad=True)
    return fwd(L.RNN(I, H, nonlinearity="relu"), rand(T, I), h[:, ::2], leaves=[h])


add(G, "state_transposed", _transposed_state)
add(G, "state_expanded_stride0", _expanded_state)
add(G, "state_expanded_packed", _expanded_state_packed)
add(G, "state_strided_unbatched", _strided_state_unbatched)

# -- PackedSequence -----------------------------------------------------------

G = "packed"


def seq(rows, batch_sizes, sorted_indices=None, unsorted_indices=None, dtype=f32):
    to = (lambda v: v if v is None or torch.is_tensor(v) else torch.tensor(v))
    return PackedSequence(rand(rows, I, dtype=dtype), to(batch_sizes), to(sorted_indices), to(unsorted_indices))


add(G, "batch_sizes_increasing", lambda L: L.LSTM(I, H)(seq(3, [1, 2])), "batch_sizes")
add(G, "batch_sizes_int32", lambda L: L.GRU(I, H)(seq(3, torch.tensor([2, 1], dtype=torch.int32))),
    r"batch_sizes|\bLong\b")
add(G, "batch_sizes_float", lambda L: L.RNN(I, H)(seq(3, torch.tensor([2.0, 1.0]))), "batch_sizes")
add(G, "batch_sizes_2d", lambda L: L.LSTM(I, H)(seq(3, [[2, 1]])), "batch_sizes")
add(G, "batch_sizes_empty", lambda L: L.GRU(I, H)(seq(0, torch.zeros(0, dtype=torch.int64))), "batch_sizes")
add(G, "batch_sizes_negative", lambda L: L.RNN(I, H)(seq(2, [2, -1])), "batch_sizes|negative")
add(G, "batch_sizes_sum_too_small", lambda L: L.LSTM(I, H)(seq(3, [2, 2])), "batch_sizes|rows|size")
add(G, "batch_sizes_sum_too_large", lambda L: fwd(L.GRU(I, H), seq(5, [2, 2])), "batch_sizes|rows|size",
    clearer="torch.nn ignores the data rows beyond sum(batch_sizes) and returns")
# torch.nn runs a step of zero rows as a no-op, and an all-empty batch as B=0: success cases
add(G, "batch_sizes_trailing_zero", lambda L: fwd(L.LSTM(I, H), seq(2, [2, 0])))
add(G, "batch_sizes_single_zero", lambda L: fwd(L.GRU(I, H), seq(0, [0])))
add(G, "sorted_indices_out_of_range_with_hx",
    lambda L: L.LSTM(I, H)(seq(3, [2, 1], [0, 5], [0, 1]), (rand(1, 2, H), rand(1, 2, H))), "indices|index|out of")
add(G, "sorted_indices_negative_with_hx",
    lambda L: L.GRU(I, H)(seq(3, [2, 1], [0, -7], [0, 1]), rand(1, 2, H)), "indices|index|out of")
add(G, "sorted_indices_too_short_with_hx",
    lambda L: L.GRU(I, H)(seq(3, [2, 1], [1], [0, 1]), rand(1, 2, H)), "hidden|indices|index")
add(G, "unsorted_indices_out_of_range", lambda L: L.GRU(I, H)(seq(3, [2, 1], [1, 0], [0, 7])), "indices|index|out of")
# torch.nn reads sorted_indices only to reorder a given hx, and does not check the indices are a
# permutation or each other's inverse: it returns, and fusedrnn must return the same
add(G, "sorted_indices_out_of_range_no_hx", lambda L: fwd(L.LSTM(I, H), seq(3, [2, 1], [0, 5], [0, 1])))
add(G, "sorted_indices_float_no_hx", lambda L: fwd(L.LSTM(I, H), seq(3, [2, 1], torch.tensor([0.0, 1.0]), [0, 1])))
add(G, "indices_not_inverse",
    lambda L: fwd(L.GRU(I, H), seq(3, [2, 1], [1, 0], [1, 0]), rand(1, 2, H, grad=True)))
add(G, "packed_data_3d", lambda L: L.LSTM(I, H)(PackedSequence(rand(3, 1, I), torch.tensor([2, 1]))), "input|dim")
add(G, "packed_data_int",
    lambda L: L.GRU(I, H)(PackedSequence(torch.ones(3, I, dtype=torch.int64), torch.tensor([2, 1]))), "dtype")
add(G, "packed_data_wrong_size", lambda L: L.RNN(I, H)(PackedSequence(rand(3, I + 1), torch.tensor([2, 1]))),
    "input_size")


def _packed_transposed_data(L):
    d = rand(I, 3, grad=True)
    return fwd(L.LSTM(I, H, bidirectional=True), PackedSequence(d.t(), torch.tensor([2, 1])), leaves=[d])


add(G, "packed_data_transposed", _packed_transposed_data)

# -- parameters replaced with wrong ones --------------------------------------

G = "weights"
_LSTM_GARBAGE = "torch.nn.LSTM's dense CPU path (mkldnn) runs with the wrong-shaped weight and returns numbers"
add(G, "lstm_weight_ih_columns", lambda L: fwd(set_param(L.LSTM(I, H), "weight_ih_l0", rand(4 * H, I + 1)), x3()),
    "weight_ih", clearer=_LSTM_GARBAGE)
add(G, "lstm_weight_ih_rows", lambda L: fwd(set_param(L.LSTM(I, H), "weight_ih_l0", rand(4 * H + 1, I)), x3()),
    "weight_ih", clearer=_LSTM_GARBAGE)
add(G, "lstm_weight_hh_columns", lambda L: fwd(set_param(L.LSTM(I, H), "weight_hh_l0", rand(4 * H, H + 1)), x3()),
    "weight_hh", clearer=_LSTM_GARBAGE)
add(G, "lstm_weight_hh_rows", lambda L: fwd(set_param(L.LSTM(I, H), "weight_hh_l0", rand(4 * H + 4, H)), x3()),
    "weight_hh", clearer=_LSTM_GARBAGE)
add(G, "lstm_weight_ih_1d", lambda L: fwd(set_param(L.LSTM(I, H), "weight_ih_l0", rand(4 * H * I)), x3()),
    "weight_ih", clearer=_LSTM_GARBAGE)
add(G, "lstm_reverse_weight_hh_rows",
    lambda L: fwd(set_param(L.LSTM(I, H, bidirectional=True), "weight_hh_l0_reverse", rand(4 * H + 4, H)), x3()),
    "weight_hh", clearer=_LSTM_GARBAGE)
add(G, "lstm_layer1_weight_ih_columns",
    lambda L: fwd(set_param(L.LSTM(I, H, 2), "weight_ih_l1", rand(4 * H, H + 1)), x3()),
    "weight_ih", clearer=_LSTM_GARBAGE)
add(G, "lstm_packed_weight_ih_columns",
    lambda L: fwd(set_param(L.LSTM(I, H), "weight_ih_l0", rand(4 * H, I + 1)), packed(x3(), [5, 3])), "weight_ih")
add(G, "lstm_bias_ih_length", lambda L: fwd(set_param(L.LSTM(I, H), "bias_ih_l0", rand(4 * H + 1)), x3()), "bias_ih")
add(G, "lstm_weight_hr_columns",
    lambda L: fwd(set_param(L.LSTM(I, H, proj_size=P), "weight_hr_l0", rand(P, H + 1)), x3()), "weight_hr")
add(G, "lstm_weight_hr_rows",
    lambda L: fwd(set_param(L.LSTM(I, H, proj_size=P), "weight_hr_l0", rand(P + 1, H)), x3()), "weight_hr")
add(G, "gru_weight_hh_columns", lambda L: fwd(set_param(L.GRU(I, H), "weight_hh_l0", rand(3 * H, H + 1)), x3()),
    "weight_hh")
add(G, "gru_bias_hh_length", lambda L: fwd(set_param(L.GRU(I, H), "bias_hh_l0", rand(3 * H - 1)), x3()), "bias_hh")
add(G, "rnn_weight_ih_columns", lambda L: fwd(set_param(L.RNN(I, H), "weight_ih_l0", rand(H, I + 2)), x3()),
    "weight_ih")
add(G, "lstm_weight_hh_float64",
    lambda L: fwd(set_param(L.LSTM(I, H), "weight_hh_l0", rand(4 * H, H, dtype=f64)), x3()), "weight_hh|dtype")
add(G, "lstm_bias_hh_float64",
    lambda L: fwd(set_param(L.LSTM(I, H), "bias_hh_l0", rand(4 * H, dtype=f64)), x3()), "bias_hh|dtype")
add(G, "gru_weight_hh_float64_data",
    lambda L: fwd(set_param(L.GRU(I, H), "weight_hh_l0", rand(3 * H, H, dtype=f64), as_data=True), x3()),
    "weight_hh|dtype")
add(G, "rnn_bias_ih_float64", lambda L: fwd(set_param(L.RNN(I, H), "bias_ih_l0", rand(H, dtype=f64)), x3()),
    "bias_ih|dtype")
add(G, "weight_ih_float64_checked_first",
    lambda L: fwd(set_param(L.GRU(I, H), "weight_ih_l0", rand(3 * H, I, dtype=f64)), x3()), "dtype")
add(G, "bias_int_data", lambda L: set_param(L.LSTM(I, H), "bias_ih_l0", torch.ones(4 * H, dtype=torch.int64), True),
    "floating|dtype")
add(G, "weight_meta_data", lambda L: set_param(L.LSTM(I, H), "weight_hh_l0", meta(4 * H, H), True),
    "tensor type|device")
add(G, "weight_meta_parameter", lambda L: fwd(set_param(L.LSTM(I, H), "weight_hh_l0", meta(4 * H, H)), x3()),
    "device|meta")
add(G, "weight_plain_tensor", lambda L: setattr(L.GRU(I, H), "weight_ih_l0", rand(3 * H, I)), "weight_ih_l0|Parameter")


def _bias_none(L):
    m = L.LSTM(I, H)
    m.bias_ih_l0 = None
    return fwd(m, x3())


add(G, "bias_set_to_none", _bias_none, "bias_ih|None")


def _transposed_weight(L):
    return fwd(set_param(L.LSTM(I, H, bidirectional=True), "weight_hh_l0", rand(H, 4 * H).t()), x3())


def _expanded_bias(L):
    return fwd(set_param(L.GRU(I, H), "bias_hh_l0", rand(1).expand(3 * H)), x3())


def _strided_weight_data(L):
    return fwd(set_param(L.RNN(I, H), "weight_ih_l0", rand(H, 2 * I)[:, ::2], as_data=True), x3())


add(G, "weight_transposed", _transposed_weight)
add(G, "bias_expanded_stride0", _expanded_bias)
add(G, "weight_strided_data", _strided_weight_data)

# -- the cell modules ---------------------------------------------------------

G = "cells"
add(G, "lstm_cell_h_tensor", lambda L: L.LSTMCell(I, H)(rand(B, I), rand(B, H)), "hx|tuple")
add(G, "lstm_cell_tuple1", lambda L: L.LSTMCell(I, H)(rand(B, I), (rand(B, H),)), "hidden|hx|two")
add(G, "lstm_cell_tuple3", lambda L: L.LSTMCell(I, H)(rand(B, I), (rand(B, H),) * 3), "hidden|hx|two")
add(G, "gru_cell_tuple", lambda L: L.GRUCell(I, H)(rand(B, I), (rand(B, H),)), "hx|hidden|tuple")
add(G, "cell_input_rank3", lambda L: L.LSTMCell(I, H)(rand(T, B, I)), "input")
add(G, "cell_input_scalar", lambda L: L.GRUCell(I, H)(torch.tensor(1.0)), "input")
add(G, "cell_input_size", lambda L: L.RNNCell(I, H)(rand(B, I + 1)), "input_size")
add(G, "cell_batch_mismatch", lambda L: L.LSTMCell(I, H)(rand(B, I), (rand(B + 1, H), rand(B + 1, H))), "batch")
add(G, "cell_hidden_size", lambda L: L.GRUCell(I, H)(rand(B, I), rand(B, H + 1)), "hidden")
add(G, "cell_c_size", lambda L: L.LSTMCell(I, H)(rand(B, I), (rand(B, H), rand(B, H + 2))), "hidden1|cx|c_0")
add(G, "cell_state_rank3", lambda L: L.RNNCell(I, H)(rand(B, I), rand(1, B, H)), "hidden|hx")
add(G, "cell_unbatched_input_batched_state", lambda L: L.GRUCell(I, H)(rand(I), rand(B, H)), "hidden|batch")
add(G, "cell_batched_input_unbatched_state", lambda L: L.RNNCell(I, H)(rand(B, I), rand(H)), "hidden|batch")
add(G, "cell_input_int", lambda L: L.LSTMCell(I, H)(torch.ones(B, I, dtype=torch.int64)), "dtype|input")
add(G, "cell_input_complex", lambda L: L.GRUCell(I, H)(rand(B, I).to(torch.complex64)), "dtype|input")
add(G, "cell_input_float64", lambda L: L.RNNCell(I, H)(rand(B, I, dtype=f64)), "dtype|input")
add(G, "cell_state_float64", lambda L: L.GRUCell(I, H)(rand(B, I), rand(B, H, dtype=f64)), "dtype|hx")
add(G, "cell_state_int", lambda L: L.RNNCell(I, H)(rand(B, I), torch.zeros(B, H, dtype=torch.int64)), "dtype|hx")
add(G, "cell_input_meta", lambda L: L.LSTMCell(I, H)(meta(B, I)), "device|meta")
add(G, "cell_state_meta", lambda L: L.GRUCell(I, H)(rand(B, I), meta(B, H)), "device|meta")
add(G, "cell_all_on_meta", lambda L: L.LSTMCell(I, H, device="meta")(meta(B, I)))
add(G, "cell_rnn_unknown_nonlinearity", lambda L: L.RNNCell(I, H, nonlinearity="gelu")(rand(B, I)), "nonlinearity")
add(G, "cell_weight_ih_columns", lambda L: set_param(L.LSTMCell(I, H), "weight_ih", rand(4 * H, I + 1))(rand(B, I)),
    "input_size|weight_ih")
add(G, "cell_weight_hh_rows", lambda L: set_param(L.GRUCell(I, H), "weight_hh", rand(3 * H + 1, H))(rand(B, I)),
    "weight_hh")
add(G, "cell_bias_length", lambda L: set_param(L.RNNCell(I, H), "bias_ih", rand(H + 1))(rand(B, I)), "bias_ih|size")
add(G, "cell_weight_float64", lambda L: set_param(L.LSTMCell(I, H), "weight_hh", rand(4 * H, H, dtype=f64))(rand(B, I)),
    "weight_hh|dtype")
add(G, "cell_empty_batch", lambda L: fwd(L.LSTMCell(I, H), rand(0, I)))
add(G, "cell_hidden_size_zero", lambda L: fwd(L.GRUCell(I, 0), rand(B, I)))
add(G, "cell_input_size_zero", lambda L: fwd(L.RNNCell(0, H), rand(B, 0)))


def _cell_nonlinearity_changed(L):
    cell = L.RNNCell(I, H)
    cell.nonlinearity = "relu"  # torch.nn reads it at every call
    return fwd(cell, rand(B, I))


def _cell_transposed(L):
    x, h, c = rand(I, B, grad=True), rand(H, B, grad=True), rand(1, H, grad=True)
    return fwd(L.LSTMCell(I, H), x.t(), (h.t(), c.expand(B, H)), leaves=[x, h, c])


def _cell_expanded_unbatched(L):
    x, h = rand(1, grad=True), rand(2 * H, grad=True)
    return fwd(L.GRUCell(I, H), x.expand(I), h[::2], leaves=[x, h])


add(G, "cell_nonlinearity_changed", _cell_nonlinearity_changed)
add(G, "cell_inputs_transposed_expanded", _cell_transposed)
add(G, "cell_unbatched_expanded_strided", _cell_expanded_unbatched)
for _kind, _ctor in [("lstm", lambda L: L.LSTMCell(I, H)), ("gru", lambda L: L.GRUCell(I, H)),
                     ("rnn_tanh", lambda L: L.RNNCell(I, H)),
                     ("rnn_relu", lambda L: L.RNNCell(I, H, nonlinearity="relu"))]:
    add(G, f"{_kind}_cell_input_nan", lambda L, c=_ctor: fwd(c(L), with_value(rand(B, I), (1, 2), NAN)))
    add(G, f"{_kind}_cell_input_inf", lambda L, c=_ctor: fwd(c(L), with_value(rand(B, I), (0, 0), -INF)))

# -- the functional API (fusedrnn only: its own checks, messages naming the argument) --

G = "functional"


def lstm_args(**change):
    """Valid lstm_layer arguments (one layer-direction), with some replaced."""
    args = dict(x=rand(T, B, I), h0=rand(B, H), c0=rand(B, H), w_ih=rand(4 * H, I), w_hh=rand(4 * H, H),
                b_ih=rand(4 * H), b_hh=rand(4 * H))
    args.update(change)
    return args


def functional(name, make_args):
    def call(L):
        return L.functional_layer(name)(**make_args())

    return call


for _name, _fn, _args, _kw in [
    ("x_2d_without_batch_sizes", "lstm_layer", lambda: lstm_args(x=rand(T * B, I)), r"\bx\b"),
    ("x_4d", "lstm_layer", lambda: lstm_args(x=rand(T, B, I, 1)), r"\bx\b"),
    ("w_ih_missing", "lstm_layer", lambda: lstm_args(w_ih=None), "w_ih"),
    ("w_hh_missing", "gru_layer", lambda: dict(x=rand(T, B, I), w_ih=rand(3 * H, I)), "w_hh"),
    ("w_hh_rows_not_multiple", "lstm_layer", lambda: lstm_args(w_hh=rand(4 * H + 1, H), w_ih=rand(4 * H + 1, I)),
     "w_hh"),
    ("w_ih_rows_mismatch", "lstm_layer", lambda: lstm_args(w_ih=rand(4 * H - 4, I)), "w_ih"),
    ("w_ih_columns", "lstm_layer", lambda: lstm_args(w_ih=rand(4 * H, I + 1)), r"w_ih|\bx\b"),
    ("w_ih_1d", "rnn_layer", lambda: dict(x=rand(T, B, I), w_ih=rand(H * I), w_hh=rand(H, H)), "w_ih"),
    ("w_hh_columns", "gru_layer", lambda: dict(x=rand(T, B, I), w_ih=rand(3 * H, I), w_hh=rand(3 * H, H + 1)), "w_hh"),
    ("b_ih_length", "lstm_layer", lambda: lstm_args(b_ih=rand(4 * H + 1)), "b_ih"),
    ("b_hh_2d", "lstm_layer", lambda: lstm_args(b_hh=rand(1, 4 * H)), "b_hh"),
    ("w_peep_length", "lstm_layer", lambda: lstm_args(w_peep=rand(4 * H)), "w_peep"),
    ("w_proj_shape", "lstm_layer", lambda: lstm_args(w_proj=rand(P, H + 1), w_hh=rand(4 * H, P), h0=rand(B, P)),
     "w_proj"),
    ("h0_shape", "lstm_layer", lambda: lstm_args(h0=rand(B + 1, H)), "h0"),
    ("h0_3d", "gru_layer", lambda: dict(x=rand(T, B, I), h0=rand(1, B, H), w_ih=rand(3 * H, I), w_hh=rand(3 * H, H)),
     "h0"),
    ("c0_shape", "lstm_layer", lambda: lstm_args(c0=rand(B, H + 1)), "c0"),
    ("h0_float64", "lstm_layer", lambda: lstm_args(h0=rand(B, H, dtype=f64)), "h0"),
    ("w_hh_float64", "lstm_layer", lambda: lstm_args(w_hh=rand(4 * H, H, dtype=f64)), "w_hh"),
    ("b_ih_int", "lstm_layer", lambda: lstm_args(b_ih=torch.ones(4 * H, dtype=torch.int64)), "b_ih"),
    ("all_int", "rnn_layer", lambda: dict(x=torch.ones(T, B, I, dtype=torch.int64),
                                          w_ih=torch.ones(H, I, dtype=torch.int64),
                                          w_hh=torch.ones(H, H, dtype=torch.int64)), r"\bx\b|float"),
    ("all_complex", "gru_layer", lambda: {k: v.to(torch.complex64) for k, v in dict(
        x=rand(T, B, I), w_ih=rand(3 * H, I), w_hh=rand(3 * H, H)).items()}, r"\bx\b|dtype|complex"),
    ("w_hh_meta", "lstm_layer", lambda: lstm_args(w_hh=meta(4 * H, H)), "w_hh"),
    ("batch_sizes_increasing", "gru_layer",
     lambda: dict(x=rand(3, I), h0=rand(1, H), w_ih=rand(3 * H, I), w_hh=rand(3 * H, H),
                  batch_sizes=torch.tensor([1, 2])), "batch_sizes"),
    ("batch_sizes_int32", "lstm_layer",
     lambda: lstm_args(x=rand(3, I), batch_sizes=torch.tensor([2, 1], dtype=torch.int32)), "batch_sizes"),
    ("batch_sizes_2d", "lstm_layer", lambda: lstm_args(x=rand(3, I), batch_sizes=torch.tensor([[2, 1]])),
     "batch_sizes"),
    ("batch_sizes_empty", "lstm_layer", lambda: lstm_args(x=rand(0, I), batch_sizes=torch.zeros(0, dtype=torch.int64)),
     "batch_sizes"),
    ("batch_sizes_sum", "lstm_layer", lambda: lstm_args(x=rand(5, I), batch_sizes=torch.tensor([2, 2])),
     "batch_sizes"),
    ("batch_sizes_vs_h0_batch", "lstm_layer", lambda: lstm_args(x=rand(3, I), batch_sizes=torch.tensor([1, 1, 1])),
     "batch_sizes|h0"),
    ("batch_sizes_meta", "lstm_layer",
     lambda: lstm_args(x=rand(3, I), batch_sizes=torch.empty(2, dtype=torch.int64, device="meta")), "batch_sizes"),
    ("rnn_nonlinearity", "rnn_layer",
     lambda: dict(x=rand(T, B, I), w_ih=rand(H, I), w_hh=rand(H, H), nonlinearity="gelu"), "nonlinearity"),
]:
    add(G, f"functional_{_name}", functional(_fn, _args), _kw, raises=CLEAR_OR_TYPE, torch_twin=False)
# an empty batch_sizes is an IndexError in torch.nn's modules; the functional API's one check says the same
CASES["functional_batch_sizes_empty"].raises = CLEAR_OR_TYPE + (IndexError,)
# (trailing zero steps in batch_sizes are accepted, as torch.nn accepts them: the module case
# batch_sizes_trailing_zero compares the result with torch.nn's)


def _functional_backend_unknown(L):
    import fusedrnn.functional as F

    return F.lstm_layer(**lstm_args(), backend="no_such_backend")


def _layer_c0_for_gru(L):
    from fusedrnn.backends.base import LayerWeights
    from fusedrnn.cells import CellSpec

    return L.functional.layer(CellSpec("gru", "reset_after"), rand(T, B, I), rand(B, H), rand(B, H),
                              LayerWeights(rand(3 * H, I), rand(3 * H, H)), backend=L.backend)


def _layer_peephole_for_rnn(L):
    from fusedrnn.backends.base import LayerWeights
    from fusedrnn.cells import CellSpec

    return L.functional.layer(CellSpec("rnn", "tanh"), rand(T, B, I), None, None,
                              LayerWeights(rand(H, I), rand(H, H), None, None, rand(3 * H)), backend=L.backend)


add(G, "functional_backend_unknown", _functional_backend_unknown, "backend", raises=(ValueError,), torch_twin=False)
add(G, "functional_c0_for_gru", _layer_c0_for_gru, "c0", raises=CLEAR_OR_TYPE, torch_twin=False)
add(G, "functional_peephole_for_rnn", _layer_peephole_for_rnn, "w_peep", raises=CLEAR_OR_TYPE, torch_twin=False)

# -- fusedrnn's extras (no torch.nn twin) -------------------------------------

G = "extras"
add(G, "peephole_not_bool", lambda L: L.LSTM(I, H, peephole=1), "peephole", raises=(TypeError,), torch_twin=False)
add(G, "peephole_on_gru", lambda L: L.GRU(I, H, peephole=True), "peephole", raises=(TypeError,), torch_twin=False)
add(G, "reset_after_not_bool", lambda L: L.GRU(I, H, reset_after="no"), "reset_after", raises=(TypeError,),
    torch_twin=False)
add(G, "backend_unknown", lambda L: L.LSTM(I, H, backend="no_such"), "backend", raises=(ValueError,), torch_twin=False)
add(G, "backend_not_str", lambda L: L.GRUCell(I, H, backend=3), "backend", raises=(TypeError,), torch_twin=False)
add(G, "peephole_weight_length",
    lambda L: fwd(set_param(L.LSTM(I, H, peephole=True), "weight_ch_l0", rand(3 * H + 1)), x3()), "weight_ch|w_peep",
    torch_twin=False)
add(G, "peephole_cell_weight_float64",
    lambda L: set_param(L.LSTMCell(I, H, peephole=True), "weight_ch", rand(3 * H, dtype=f64))(rand(B, I)),
    "weight_ch|w_peep|dtype", torch_twin=False)


# sLSTM (four states, a block-diagonal weight_hh by heads): what its modules and kernels must refuse
def _slstm_states(m0_dtype=f32, count=4, width=H):
    return tuple(rand(1, B, width if i == 2 else H, dtype=m0_dtype if i == 3 else f32) for i in range(count))


add(G, "slstm_heads_not_dividing", lambda L: L.SLSTM(I, H, num_heads=3), "num_heads", raises=(ValueError,),
    torch_twin=False)
add(G, "slstm_heads_float", lambda L: L.SLSTMCell(I, H, num_heads=2.0), "num_heads", raises=(TypeError,),
    torch_twin=False)
add(G, "slstm_weight_hh_dense", lambda L: fwd(set_param(L.SLSTM(I, H, num_heads=2), "weight_hh_l0", rand(4 * H, H)),
                                               x3()), "weight_hh", torch_twin=False)
add(G, "slstm_weight_hh_float64_data",
    lambda L: fwd(set_param(L.SLSTM(I, H), "weight_hh_l0", rand(4 * H, H, dtype=f64), as_data=True), x3()),
    "weight_hh|dtype", torch_twin=False)
add(G, "slstm_three_states", lambda L: fwd(L.SLSTM(I, H), x3(), _slstm_states(count=3)), "four|hx",
    raises=CLEAR_OR_TYPE + (IndexError,), torch_twin=False)
add(G, "slstm_n0_width", lambda L: fwd(L.SLSTM(I, H), x3(), _slstm_states(width=H + 1)), "hidden\\[2\\]|size",
    torch_twin=False)
add(G, "slstm_m0_float64", lambda L: fwd(L.SLSTM(I, H), x3(), _slstm_states(m0_dtype=f64)), "mx|dtype",
    torch_twin=False)
add(G, "slstm_cell_weight_ih_float64",
    lambda L: set_param(L.SLSTMCell(I, H), "weight_ih", rand(4 * H, I, dtype=f64))(rand(B, I)), "weight_ih|dtype",
    torch_twin=False)

# -- the worker's self-test (not part of the matrix: tests/test_bad_inputs.py checks the harness with it) --

SELFTEST = {
    "selftest_returns": Case("selftest_returns", "selftest", lambda L: fwd(L.GRU(I, H), x3())),
    "selftest_aborts": Case("selftest_aborts", "selftest",
                            lambda L: L.GRU(I, H) if L.is_torch else __import__("os").abort()),
    "selftest_hangs": Case("selftest_hangs", "selftest",
                           lambda L: L.GRU(I, H) if L.is_torch else __import__("time").sleep(3600)),
    "selftest_wrong_answer": Case("selftest_wrong_answer", "selftest",
                                  lambda L: torch.ones(2) if L.is_torch else torch.ones(2) * 1.001),
}

# ----------------------------------------------------------------------------
# Running and comparing (inside the worker process)
# ----------------------------------------------------------------------------


def flatten(value) -> list:
    """Tensors and plain values in a fixed order; a module as its parameters' names, shapes, dtypes, devices."""
    if torch.is_tensor(value):
        return [value]
    if isinstance(value, nn.Module):
        return [tuple((n, tuple(p.shape), str(p.dtype), p.device.type) for n, p in value.named_parameters())]
    if isinstance(value, dict):
        return [x for k in sorted(value) for x in [k] + flatten(value[k])]
    if isinstance(value, (tuple, list)):  # PackedSequence is a namedtuple
        return [type(value).__name__] + [x for v in value for x in flatten(v)]
    return [value]


TOLERANCE = {f32: 1e-5, f64: 1e-10}


def mismatch(actual, expected) -> Optional[str]:
    """None when ``actual`` is ``expected`` (tensors close, NaN where NaN, inf where inf), else why not."""
    a, e = flatten(actual), flatten(expected)
    if len(a) != len(e):
        return f"different structure: {len(a)} vs {len(e)} leaves"
    for i, (x, y) in enumerate(zip(a, e)):
        if torch.is_tensor(x) != torch.is_tensor(y):
            return f"leaf {i}: {type(x).__name__} vs {type(y).__name__}"
        if not torch.is_tensor(x):
            if x != y:
                return f"leaf {i}: {x!r} vs {y!r}"
            continue
        if x.shape != y.shape or x.dtype != y.dtype or x.device.type != y.device.type:
            return (f"leaf {i}: {tuple(x.shape)} {x.dtype} on {x.device.type} vs "
                    f"{tuple(y.shape)} {y.dtype} on {y.device.type}")
        if x.device.type == "meta":
            continue
        tol = TOLERANCE.get(x.dtype, 0.0)
        try:
            torch.testing.assert_close(x.detach(), y.detach(), rtol=tol, atol=tol, equal_nan=True)
        except AssertionError as exc:
            return f"leaf {i}: {exc}"
    return None


def _outcome(case: Case, implementation: str):
    reset(case.name)
    try:
        return "returned", case.call(Lib(implementation))
    except Exception as exc:  # noqa: BLE001 -- the exception is the outcome
        return "raised", exc


def run_pairs(pairs: List[Tuple[str, str]], torch_crashed: set, out) -> None:
    """Run each (case, implementation), appending start/done events to ``out`` (flushed each time)."""
    cases = dict(CASES, **SELFTEST)
    torch_values: Dict[str, tuple] = {}

    def emit(event):
        out.write(json.dumps(event) + "\n")
        out.flush()

    for name, implementation in pairs:
        case = cases[name]
        emit({"event": "start", "case": name, "impl": implementation})
        faulthandler.dump_traceback_later(PAIR_TIMEOUT, exit=True)
        status, value = _outcome(case, implementation)
        if implementation == TORCH:
            torch_values[name] = (status, value)
        done = {"event": "done", "case": name, "impl": implementation, "status": status}
        if status == "raised":
            done.update(type=type(value).__name__, message=str(value)[:600])
        elif implementation != TORCH and case.torch_twin and name not in torch_crashed:
            if name not in torch_values:  # run in an earlier worker, which then died: run it again here
                torch_values[name] = _outcome(case, TORCH)
            torch_status, torch_value = torch_values[name]
            if torch_status == "returned":
                done["mismatch"] = mismatch(value, torch_value)
        faulthandler.cancel_dump_traceback_later()
        emit(done)


PAIR_TIMEOUT = 60


def main(argv=None) -> int:
    global PAIR_TIMEOUT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="file the events are appended to")
    parser.add_argument("--pair-timeout", type=float, default=PAIR_TIMEOUT,
                        help="seconds one call may take before it counts as a hang")
    args = parser.parse_args(argv)
    PAIR_TIMEOUT = args.pair_timeout
    job = json.load(sys.stdin)
    faulthandler.enable()  # a crash prints the Python stack to stderr, which the parent reports
    warnings.simplefilter("ignore")  # torch.nn's non-contiguous-weights warning and the like
    torch.set_num_threads(1)
    with open(args.out, "a") as out:
        run_pairs([tuple(p) for p in job["pairs"]], set(job.get("torch_crashed", [])), out)
    return 0


def keyword_matches(case: Case, message: str) -> bool:
    return case.keyword is not None and re.search(case.keyword, message, flags=re.IGNORECASE) is not None


if __name__ == "__main__":
    sys.exit(main())
