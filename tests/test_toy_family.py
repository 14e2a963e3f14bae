"""Adding a cell *family* is one record in the cell table and its reference step (docs/design.md section 11).

Two toy families are registered from this file only, with no edit to the library:

* ``coupled``, 2 gates and a cell state: ``f = σ(a_f)``, ``g = tanh(a_g)``, ``c' = f*c + (1-f)*g``,
  ``h' = tanh(c')``; saved activations ``[f, g, c']``;
* ``mgu``, the minimal gated unit, 2 gates and no cell state: ``f = σ(x_f + W_hf h + b_hf)``,
  ``n = tanh(x_n + W_hn (f*h) + b_hn)``, ``h' = (1-f)*h + f*n``; saved activations ``[f, n]``.

Each must then run through the generic module :class:`fusedrnn.Recurrent` (batched, unbatched,
packed, bidirectional over two layers), the functional form and its custom ops (defined on first
use, inside torch.compile's tracing too), on the reference backend ("auto" falls back to it with
its once-only warning: no backend has kernels for it), with outputs and gradients that autograd
through a plain loop of the cell's step agrees with, and pass fusedrnn.check's comparison.  The
ops outlive a family's removal from the table, and serve the family again when it is registered
anew with another record.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import uuid
from typing import Callable, Iterator, Optional, Tuple

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fusedrnn
import fusedrnn.testing as ft
from fusedrnn import backends, cells, check, ops, reference
from fusedrnn.cells import CellRecord, CellSpec
from fusedrnn.layer import LayerWeights

from new_cells import assert_auto_falls_back_once, assert_same_values_and_gradients

# auto's fallback warning is asserted once (test_auto_falls_back_once_with_a_warning); elsewhere expected
pytestmark = pytest.mark.filterwarnings("ignore:fusedrnn. using backend 'reference':RuntimeWarning")


def _hidden_bias(w: LayerWeights, blocks: int):
    return w.b_hh.chunk(blocks) if w.b_hh is not None else (0,) * blocks


def coupled_step(xp, h, c, w: LayerWeights):
    """The coupled cell's definition: (h', c', workspace [f, g, c'])."""
    a = xp + h @ w.w_hh.t() + (w.b_hh if w.b_hh is not None else 0)
    a_f, a_g = a.chunk(2, dim=1)
    f, g = torch.sigmoid(a_f), torch.tanh(a_g)
    c_new = f * c + (1 - f) * g
    return torch.tanh(c_new), c_new, torch.cat([f, g, c_new], dim=1)


def mgu_step(xp, h, c, w: LayerWeights):
    """The minimal gated unit's definition: (h', no cell state, workspace [f, n])."""
    x_f, x_n = xp.chunk(2, dim=1)
    w_f, w_n = w.w_hh.chunk(2, dim=0)
    b_f, b_n = _hidden_bias(w, 2)
    f = torch.sigmoid(x_f + h @ w_f.t() + b_f)
    n = torch.tanh(x_n + (f * h) @ w_n.t() + b_n)
    return (1 - f) * h + f * n, None, torch.cat([f, n], dim=1)


#: kind -> (the record's facts, the step)
KINDS = {
    "coupled": (dict(gates=("f", "g"), workspace=("f", "g", "c'"), states=("h", "c")), coupled_step),
    "mgu": (dict(gates=("f", "n"), workspace=("f", "n")), mgu_step),
}


@contextlib.contextmanager
def registered(family: str, kind: str) -> Iterator[CellSpec]:
    """Toy family ``kind`` registered as ``family`` (one mode, its default, named as the family): its
    record, its reference step and its checker variant, all removed on exit."""
    facts, step = KINDS[kind]
    cells.register(CellRecord(family, family, default=True, **facts))
    try:
        reference.register_step(family, family, step)
        ft.VARIANTS[family] = ft.Variant(family, CellSpec(family, family))
        yield CellSpec(family, family)
    finally:
        ft.VARIANTS.pop(family, None)
        reference._STEPS.pop((family, family), None)
        del cells.CELLS[(family, family)]


def fresh_name(kind: str) -> str:
    """A family name no test has used in this process: its ops cannot be defined yet."""
    return f"{kind}_{uuid.uuid4().hex[:8]}"


#: The traced tests name the reference backend (test_compile_with_auto_falling_back compiles "auto").
TRACED_BACKEND = "reference"


@pytest.fixture(params=sorted(KINDS))
def toy(request) -> Iterator[Tuple[CellSpec, Callable]]:
    """Each toy family under its own name, registered for one test."""
    with registered(request.param, request.param) as cell:
        yield cell, KINDS[request.param][1]


# ----------------------------------------------------------------------------
# The test's own oracle: the cell's step in a plain loop, layer by layer, direction by direction
# ----------------------------------------------------------------------------


def plain_loop(step, x, h, c, w: LayerWeights):
    """One layer-direction over ``x`` [T, B, I], step by step in plain PyTorch."""
    outs = []
    for t in range(x.shape[0]):
        h, c, _ = step(x[t] @ w.w_ih.t() + (w.b_ih if w.b_ih is not None else 0), h, c, w)
        outs.append(h)
    return torch.stack(outs), h, c


def plain_stack(module: fusedrnn.Recurrent, step, x, states: Optional[Tuple[torch.Tensor, ...]]):
    """What ``module`` computes for time-major ``x`` [T, B, I] with every sequence T long."""
    directions = 2 if module.bidirectional else 1
    B, H = x.shape[1], module.hidden_size
    has_c = module.cell.has_cell_state
    if states is None:
        states = tuple(x.new_zeros(module.num_layers * directions, B, H) for _ in range(2 if has_c else 1))
    layer_input, h_n, c_n = x, [], []
    for layer in range(module.num_layers):
        outputs = []
        for d in range(directions):
            index, suffix = layer * directions + d, "_reverse" if d else ""
            w = LayerWeights(*(getattr(module, f"{p}_l{layer}{suffix}", None) for p in
                               ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))
            seq = layer_input.flip(0) if d else layer_input
            out, h, c = plain_loop(step, seq, states[0][index], states[1][index] if has_c else None, w)
            outputs.append(out.flip(0) if d else out)
            h_n.append(h)
            c_n.append(c)
        layer_input = torch.cat(outputs, dim=-1)
    return layer_input, torch.stack(h_n), (torch.stack(c_n) if has_c else None)


def initial_states(cell: CellSpec, *shape) -> Tuple[torch.Tensor, ...]:
    count = 2 if cell.has_cell_state else 1
    return tuple(torch.randn(*shape, dtype=torch.float64, requires_grad=True) for _ in range(count))


def as_hx(states):
    return states if len(states) == 2 else states[0]


# ----------------------------------------------------------------------------
# The generic module
# ----------------------------------------------------------------------------


def test_the_generic_module_has_the_layout_the_record_implies(toy):
    cell, _ = toy
    rnn = fusedrnn.Recurrent(cell.family, 3, 5, num_layers=2, bidirectional=True)
    assert rnn.cell == cell and isinstance(rnn, torch.nn.RNNBase)
    expected = {}
    for layer, width in ((0, 3), (1, 10)):
        for suffix in ("", "_reverse"):
            expected.update({f"weight_ih_l{layer}{suffix}": (10, width), f"weight_hh_l{layer}{suffix}": (10, 5),
                             f"bias_ih_l{layer}{suffix}": (10,), f"bias_hh_l{layer}{suffix}": (10,)})
    assert {n: tuple(p.shape) for n, p in rnn.named_parameters()} == expected
    assert repr(rnn) == f"Recurrent('{cell.family}', 3, 5, num_layers=2, bidirectional=True)"
    copy = pickle.loads(pickle.dumps(rnn))
    assert copy.cell == cell and copy.state_dict().keys() == rnn.state_dict().keys()


def test_batched_batch_first_with_states(toy):
    cell, step = toy
    torch.manual_seed(0)
    rnn = fusedrnn.Recurrent(cell.family, 3, 5, batch_first=True, dtype=torch.float64)
    x = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    states = initial_states(cell, 1, 2, 5)
    out, hx_n = rnn(x, as_hx(states))
    expected_out, *expected_states = plain_stack(rnn, step, x.transpose(0, 1), states)
    mine = (out, *(hx_n if cell.has_cell_state else (hx_n,)))
    assert_same_values_and_gradients(mine, (expected_out.transpose(0, 1), *expected_states),
                                     [x, *states, *rnn.parameters()])


def test_unbatched_without_states(toy):
    cell, step = toy
    torch.manual_seed(1)
    rnn = fusedrnn.Recurrent(cell.family, 3, 4, bias=False, dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    out, hx_n = rnn(x)
    expected_out, *expected_states = plain_stack(rnn, step, x.unsqueeze(1), None)
    assert out.shape == (5, 4)
    mine = (out, *(hx_n if cell.has_cell_state else (hx_n,)))
    assert_same_values_and_gradients(mine, (expected_out.squeeze(1), *(s.squeeze(1) for s in expected_states
                                                                       if s is not None)),
                                     [x, *rnn.parameters()])


def test_packed_unsorted_bidirectional_two_layers_with_states(toy):
    """Each sequence of a packed batch (unsorted lengths, states permuted with them) as if run alone."""
    cell, step = toy
    torch.manual_seed(2)
    rnn = fusedrnn.Recurrent(cell.family, 3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([2, 5, 4])
    states = initial_states(cell, 4, 3, 4)
    out, hx_n = rnn(pack_padded_sequence(x, lengths, enforce_sorted=False), as_hx(states))
    padded, _ = pad_packed_sequence(out)
    mine, theirs = [], []
    for b, n in enumerate(lengths.tolist()):
        alone = plain_stack(rnn, step, x[:n, b:b + 1], tuple(s[:, b:b + 1] for s in states))
        mine += [padded[:n, b:b + 1], *(s[:, b:b + 1] for s in (hx_n if cell.has_cell_state else (hx_n,)))]
        theirs += [t for t in alone if t is not None]
    assert_same_values_and_gradients(mine, theirs, [x, *states, *rnn.parameters()])


def test_auto_falls_back_once_with_a_warning_and_a_named_backend_refuses(toy, monkeypatch):
    cell, _ = toy
    monkeypatch.setattr(backends, "_warned", set())  # the warning is once per process: as if this were the first
    rnn = fusedrnn.Recurrent(cell.family, 3, 4)
    x = torch.randn(4, 2, 3)
    assert_auto_falls_back_once(rnn, x)
    named = fusedrnn.Recurrent(cell.family, 3, 4, backend="cpu")
    if "cpu" in backends.available():
        with pytest.raises(RuntimeError, match=f"'cpu' cannot run this call: it has no kernels for the {cell}"):
            named(x)
    else:
        with pytest.raises(RuntimeError, match="'cpu' cannot run this call"):
            named(x)


# ----------------------------------------------------------------------------
# functional, ops, fusedrnn.check
# ----------------------------------------------------------------------------


def test_the_functional_form_and_the_op(toy):
    cell, step = toy
    torch.manual_seed(3)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    states = [s.detach() for s in initial_states(cell, 2, 5)]
    w = LayerWeights(*(torch.randn(shape, dtype=torch.float64) for shape in ((10, 3), (10, 5), (10,), (10,))))
    expected = plain_loop(step, x, states[0], states[1] if cell.has_cell_state else None, w)
    c0 = states[1] if cell.has_cell_state else None
    res = fusedrnn.functional.layer(cell, x, states[0], c0, w, backend="reference")
    for a, b in zip(res, expected):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    op = getattr(torch.ops.fusedrnn, f"{cell.family}_forward")  # defined by the call above
    # the op's weights: w_ih .. w_proj (w_peep and w_proj None after the biases; w_extra only for a family with
    # extra weights, which these have not: ops.op_weights); then batch_sizes, reverse, mode, backend
    assert ops.op_weights(cell.family) == 6
    out, h_n, c_n, workspace = op(x, states[0], c0, *w[:6], None, False, cell.mode, "reference")
    torch.testing.assert_close(out, expected[0], rtol=1e-12, atol=1e-12)
    assert workspace.shape == (4, 2, cell.workspace_blocks * 5)
    assert c_n.numel() == (2 * 5 if cell.has_cell_state else 0)  # absent outputs are empty tensors


def test_the_checker_passes_it_on_the_reference_backend(toy):
    """python -m fusedrnn.check's grid on the family (torch.nn has no twin: the reference oracle only)."""
    cell, _ = toy
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = check.main(["--backends", "reference", "--cells", cell.family, "--quick"])
    text = printed.getvalue()
    assert status == 0, text
    assert "PASSED" in text and "grad_w_hh" in text, text
    outcome = ft.Checker("cpu").check("reference", ft.Case(cell.family, (5, 3, 4, 7), "packed-reverse"),
                                      torch.float32)
    assert outcome.passed and any(r.quantity == "grad_c0" for r in outcome.rows) == cell.has_cell_state, outcome


# ----------------------------------------------------------------------------
# ops defined on first use; the table's removal and a new record under the same name
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("strict", [False, True], ids=["export", "export-strict"])
def test_export_defines_the_ops_while_tracing(strict):
    family = fresh_name("mgu")
    with registered(family, "mgu"):
        assert not hasattr(torch.ops.fusedrnn, f"{family}_forward")
        torch.manual_seed(4)
        rnn = fusedrnn.Recurrent(family, 3, 4, num_layers=2, backend=TRACED_BACKEND)
        x = torch.randn(5, 2, 3)
        program = torch.export.export(rnn, (x,), strict=strict)
        targets = {str(node.target) for node in program.graph.nodes}
        assert f"fusedrnn.{family}_forward.default" in targets, targets
        for a, b in zip(program.module()(x), rnn(x)):
            torch.testing.assert_close(a, b)


def test_compile_defines_the_ops_while_tracing():
    """The first call of a family inside torch.compile(fullgraph=True): its ops are defined at trace time,
    the fake kernel gives the shapes, and forward and backward equal eager's."""
    family = fresh_name("coupled")
    with registered(family, "coupled") as cell:
        assert family not in ops._OPS
        torch.manual_seed(5)
        rnn = fusedrnn.Recurrent(family, 3, 4, num_layers=2, bidirectional=True, batch_first=True,
                                 backend=TRACED_BACKEND)
        x = torch.randn(2, 5, 3, requires_grad=True)
        states = initial_states(cell, 4, 2, 4)
        states = tuple(s.detach().float().requires_grad_() for s in states)
        torch._dynamo.reset()
        compiled = torch.compile(rnn, fullgraph=True, backend="aot_eager")
        out, (h_n, c_n) = compiled(x, states)
        assert family in ops._OPS
        expected, (expected_h, expected_c) = rnn(x, states)
        leaves = [x, *states, *rnn.parameters()]
        loss = lambda o, h, c: (o.sin().sum() + h.cos().sum() + (c * c).sum())  # noqa: E731
        mine = torch.autograd.grad(loss(out, h_n, c_n), leaves)
        theirs = torch.autograd.grad(loss(expected, expected_h, expected_c), leaves)
        for a, b in zip((out, h_n, c_n, *mine), (expected, expected_h, expected_c, *theirs)):
            torch.testing.assert_close(a, b)


def test_compile_with_auto_falling_back(toy):
    """auto's fallback (its warning composed where Dynamo runs it itself) compiles with fullgraph=True."""
    cell, _ = toy
    rnn = fusedrnn.Recurrent(cell.family, 3, 4)
    x = torch.randn(5, 2, 3)
    expected = rnn(x)  # the warning, if any, given eagerly
    torch._dynamo.reset()
    for a, b in zip(torch.compile(rnn, fullgraph=True, backend="aot_eager")(x), expected):
        torch.testing.assert_close(a, b)


def test_a_removed_family_is_refused_and_can_come_back_with_another_record():
    family = fresh_name("toy")
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    with registered(family, "mgu"):
        fusedrnn.Recurrent(family, 3, 5, dtype=torch.float64)(x)
    assert family not in cells.families() and family not in ft.VARIANTS
    assert all(key[0] != family for key in reference._STEPS)
    with pytest.raises(ValueError, match=f"unknown cell family '{family}'"):
        fusedrnn.Recurrent(family, 3, 5)
    h0, c0 = x.new_zeros(2, 5), x.new_zeros(2, 5)
    w = [torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 5, dtype=torch.float64)]
    op = getattr(torch.ops.fusedrnn, f"{family}_forward")  # still defined: torch.library cannot remove it
    with pytest.raises(ValueError, match=f"unknown cell family '{family}'"):
        op(x, h0, None, *w, None, None, None, None, None, False, family, "reference")
    # the same name, another record (a cell state, three saved blocks): the ops read the table at each call
    with registered(family, "coupled") as cell:
        rnn = fusedrnn.Recurrent(family, 3, 5, dtype=torch.float64)
        out, (h_n, c_n) = rnn(x)
        expected = plain_stack(rnn, coupled_step, x, None)
        for a, b in zip((out, h_n, c_n), expected):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
            fake = [mode.from_tensor(t) for t in (x, h0, c0, *w)]
            workspace = op(*fake, None, None, None, None, None, False, family, "reference")[3]
        assert workspace.shape == (4, 2, cell.workspace_blocks * 5)


# ----------------------------------------------------------------------------
# the generic module on the built-in families, and what it refuses
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("family, drop_in, kwargs", [
    ("lstm", fusedrnn.LSTM, {"proj_size": 2, "peephole": True}),
    ("gru", fusedrnn.GRU, {}),
    ("rnn", fusedrnn.RNN, {}),
])
def test_on_a_built_in_family_it_is_the_drop_in_module(family, drop_in, kwargs):
    torch.manual_seed(6)
    generic = fusedrnn.Recurrent(family, 3, 5, num_layers=2, bidirectional=True, **kwargs)
    torch.manual_seed(6)
    twin = drop_in(3, 5, num_layers=2, bidirectional=True, **kwargs)
    assert generic.state_dict().keys() == twin.state_dict().keys()
    for (name, a), b in zip(generic.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), name  # the same parameters, in the same order, with the same draws
    x = torch.randn(4, 2, 3)
    torch.testing.assert_close(generic(x), twin(x))


def test_it_refuses_what_the_table_does_not_have():
    with pytest.raises(ValueError, match="unknown cell family 'nope'"):
        fusedrnn.Recurrent("nope", 3, 5)
    with pytest.raises(ValueError, match="unknown mode 'minimal' for cell family 'gru'"):
        fusedrnn.Recurrent("gru", 3, 5, mode="minimal")
    with pytest.raises(ValueError, match=r"proj_size argument is only supported for cells with a projection "
                                         r"\(LSTM\), not gru\[reset_before\]"):
        fusedrnn.Recurrent("gru", 3, 5, proj_size=2, mode="reset_before")
    with pytest.raises(ValueError, match="peephole connections exist only for cells that have them"):
        fusedrnn.Recurrent("rnn", 3, 5, peephole=True)
    assert "mode='relu'" in repr(fusedrnn.Recurrent("rnn", 3, 5, mode="relu"))


def test_a_family_whose_name_cannot_name_an_op_is_refused_at_its_first_call():
    with registered("two words", "mgu"):
        rnn = fusedrnn.Recurrent("two words", 3, 5)
        with pytest.raises(ValueError, match="cell family 'two words' cannot name a custom op"):
            rnn(torch.randn(4, 2, 3))
