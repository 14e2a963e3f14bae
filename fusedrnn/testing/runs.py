"""A case's data, and the runs (a backend, the reference, torch.nn, a whole module) that give comparable results."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .. import functional, reference
from ..ops import op_weights
from ..backends.base import LayerWeights
from ..cells import CELLS, CellSpec, torch_twin
from .grid import Case, MODULE_LAYERS, ModuleCase

Results = Dict[str, torch.Tensor]

# ----------------------------------------------------------------------------
# A problem's data, and the runs that produce comparable results
# ----------------------------------------------------------------------------

#: differentiable inputs, in the ops' argument order (``w_extra`` only in the ops of a family that has it)
INPUTS = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_peep", "w_proj", "w_extra")
OUTPUTS = ("out", "h_n", "c_n")
#: every quantity compared, in report order
QUANTITIES = OUTPUTS + tuple(f"grad_{n}" for n in INPUTS)


@dataclass
class LayerCase:
    """One layer-direction call's arguments as the backends and ops take them (:mod:`fusedrnn.backends.base`).

    A packed case's ``x`` is its packed rows (sorted by length, as PackedSequence
    keeps them) with ``batch_sizes``, and ``h0``, ``c0`` are in that sorted order;
    ``upstream`` holds the gradients of ``out``, ``h_n``, ``c_n`` in the same layout.
    Made by :meth:`Problem.layer_case` (or :func:`layer_case`), so it holds the
    problem's values: the same as every run of :func:`run_layer` sees.
    """

    cell: CellSpec
    x: torch.Tensor
    h0: torch.Tensor
    c0: Optional[torch.Tensor]
    weights: LayerWeights
    batch_sizes: Optional[torch.Tensor]
    reverse: bool
    upstream: Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]

    def inputs(self) -> List[Optional[torch.Tensor]]:
        """x, h0, c0 and the weights, in the ops' argument order (None where absent): six weights, or seven
        with ``w_extra`` for a family whose ops take it (:func:`fusedrnn.ops.op_weights`)."""
        return [self.x, self.h0, self.c0, *self.weights[:op_weights(self.cell.family)]]

    def differentiable(self) -> List[torch.Tensor]:
        """The inputs that are present."""
        return [t for t in self.inputs() if t is not None]

    def args(self) -> tuple:
        """(cell, x, h0, c0, weights, batch_sizes, reverse): the arguments of a backend's ``forward`` and of
        :func:`fusedrnn.reference.sequence_forward`."""
        return self.cell, self.x, self.h0, self.c0, self.weights, self.batch_sizes, self.reverse

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "LayerCase":
        """The case with ``fn`` applied to each tensor (inputs and upstream gradients; not ``batch_sizes``)."""

        def apply(t):
            return None if t is None else fn(t)

        return LayerCase(self.cell, apply(self.x), apply(self.h0), apply(self.c0),
                         LayerWeights(*map(apply, self.weights)), self.batch_sizes, self.reverse,
                         tuple(map(apply, self.upstream)))

    def to(self, dtype: Optional[torch.dtype] = None, device=None) -> "LayerCase":
        """The same values in ``dtype`` on ``device`` (contiguous); ``batch_sizes`` stays on the CPU, as in
        PackedSequence."""
        return self.map(lambda t: t.to(device=device, dtype=dtype).contiguous())

    def detach(self) -> "LayerCase":
        return self.map(torch.Tensor.detach)

    def requiring_grad(self) -> "LayerCase":
        """Detached copies of the inputs that require grad (autograd's leaves); upstream unchanged."""
        leaves = self.map(lambda t: t.detach().clone().requires_grad_())
        leaves.upstream = self.upstream
        return leaves


@dataclass
class Problem:
    """Random float64 data for a case: inputs (padded ``x``), lengths, upstream gradients."""

    case: "Case | ModuleCase"
    inputs: Dict[str, torch.Tensor]
    upstream: Dict[str, torch.Tensor]
    lengths: Optional[List[int]]

    def layer_case(self, dtype: torch.dtype, device="cpu") -> LayerCase:
        """The problem as one layer-direction call's arguments (:class:`LayerCase`), in ``dtype`` on ``device``."""
        inputs = self.inputs
        x, batch_sizes, h0, c0, _ = _pack(self, inputs["x"], inputs["h0"], inputs.get("c0"))
        up_out, _, up_hn, up_cn, _ = _pack(self, self.upstream["out"], self.upstream["h_n"], self.upstream.get("c_n"))
        case = LayerCase(self.case.cell, x, h0, c0, LayerWeights(*(inputs.get(n) for n in INPUTS[3:])), batch_sizes,
                         self.case.layout.reverse, (up_out, up_hn, up_cn))
        return case.to(dtype, device)


def _pack(problem: Problem, x: torch.Tensor, h0: torch.Tensor, c0: Optional[torch.Tensor]):
    """(rows, batch_sizes, h0, c0, packed) of a padded ``x`` and states [B, *] in batch order: a packed
    problem's rows sorted by length and its states in that order; a padded one's unchanged (packed None)."""
    if problem.lengths is None:
        return x, None, h0, c0, None
    packed = pack_padded_sequence(x, torch.tensor(problem.lengths), enforce_sorted=False)
    order = packed.sorted_indices
    return packed.data, packed.batch_sizes, h0[order], None if c0 is None else c0[order], packed


def make_problem(case: Case, dtype: torch.dtype = torch.float64, seed: Optional[int] = None) -> Problem:
    """The case's data, rounded to ``dtype`` (and held in float64).

    Weights are uniform in +-1/sqrt(fan-in) like torch.nn's initialisation,
    so the gates neither saturate nor stay linear; inputs and states are
    uniform in +-1.  The random numbers come from ``seed`` (default: derived from
    the case's id); packed lengths are random and unsorted unless the case fixes them.
    """
    T, B, I, H = case.shape
    G, P = case.cell.gates, case.proj_size
    hout = P or H
    g = torch.Generator().manual_seed(zlib.crc32(case.id.encode()) if seed is None else seed)

    def rand(*shape, fan=1):  # in place: a large weight (H=8192) costs no temporaries
        t = torch.rand(*shape, generator=g, dtype=torch.float64).mul_(2).sub_(1).div_(fan ** 0.5)
        return t.to(dtype).to(torch.float64)

    bias = case.layout.bias
    w_hh_shape = case.cell.recurrent_shape(H, hout)
    inputs = {
        "x": rand(T, B, I),
        "h0": rand(B, hout),
        # the states after h, concatenated (sLSTM's c, n, m)
        "c0": rand(B, case.cell.cell_state_blocks * H) if case.cell.has_cell_state else None,
        "w_ih": rand(G * H, I, fan=I),
        # fan-in: a row's width (hout; a head's for sLSTM's blocks), 1 for an element-wise recurrent weight
        "w_hh": rand(*w_hh_shape, fan=w_hh_shape[1] if len(w_hh_shape) == 2 else 1),
        "b_ih": rand(G * H, fan=H) if bias else None,
        "b_hh": rand(G * H, fan=H) if bias else None,
        "w_peep": rand(3 * H, fan=H) if case.peephole else None,
        "w_proj": rand(P, H, fan=H) if P else None,
        # a cell's extra weights (layer-norm gains and shifts): fresh random numbers like the rest, never
        # their initial ones and zeros
        "w_extra": rand(case.cell.extra_blocks * H) if case.cell.extra_blocks else None,
    }
    upstream = {
        "out": rand(T, B, hout),
        "h_n": rand(B, hout),
        "c_n": rand(B, case.cell.cell_state_blocks * H) if case.cell.has_cell_state else None,
    }
    lengths = None
    if getattr(case, "lengths", None) is not None:  # a layer Case may fix them; a ModuleCase never does
        lengths = list(case.lengths)
    elif case.layout.packed:
        # unsorted random lengths in [1, T], one of them T so that every step exists
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        lengths[torch.randint(0, B, (1,), generator=g)] = T
        lengths = lengths.tolist()
    return Problem(case, {k: v for k, v in inputs.items() if v is not None},
                   {k: v for k, v in upstream.items() if v is not None}, lengths)


def layer_case(case: Case, dtype: torch.dtype = torch.float64, device="cpu", seed: Optional[int] = None) -> LayerCase:
    """The case's data (:func:`make_problem`) as one layer-direction call's arguments in ``dtype`` on ``device``."""
    return make_problem(case, dtype, seed).layer_case(dtype, device)


#: f(cell, x_rows, h0, c0, weights, batch_sizes, reverse) -> (out, h_n, c_n)
LayerFn = Callable[..., Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]]


def _leaves(problem: Problem, dtype: torch.dtype, device) -> Dict[str, torch.Tensor]:
    return {k: v.to(device=device, dtype=dtype).requires_grad_() for k, v in problem.inputs.items()}


def _gradients(problem: Problem, leaves: Dict[str, torch.Tensor], outputs: Dict[str, torch.Tensor]) -> Results:
    """Outputs and the gradients of every input for the problem's upstream gradients (float64)."""
    device = next(iter(leaves.values())).device
    loss = sum((outputs[k].to(torch.float64) * problem.upstream[k].to(device)).sum() for k in problem.upstream)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    results = {k: outputs[k].detach().to(torch.float64) for k in problem.upstream}
    for name, leaf, grad in zip(leaves, leaves.values(), grads):
        results[f"grad_{name}"] = (torch.zeros_like(leaf) if grad is None else grad).detach().to(torch.float64)
    return results


def run_layer(problem: Problem, layer_fn: LayerFn, dtype: torch.dtype, device) -> Results:
    """Run one layer-direction function on the problem in ``dtype``; padded results in batch order.

    Packed cases go in as packed rows (sorted by length, as PackedSequence
    keeps them) with ``batch_sizes``, and come back padded and unsorted, so
    results of every run line up element for element.
    """
    case = problem.case
    leaves = _leaves(problem, dtype, device)
    weights = LayerWeights(*(leaves.get(n) for n in INPUTS[3:]))
    rows, batch_sizes, h0, c0, packed = _pack(problem, leaves["x"], leaves["h0"], leaves.get("c0"))
    out, h_n, c_n = layer_fn(case.cell, rows, h0, c0, weights, batch_sizes, case.layout.reverse)
    if packed is not None:
        out = pad_packed_sequence(
            PackedSequence(out, batch_sizes, packed.sorted_indices, packed.unsorted_indices),
            total_length=case.shape.T,
        )[0]
        h_n = h_n[packed.unsorted_indices]
        c_n = None if c_n is None else c_n[packed.unsorted_indices]
    return _gradients(problem, leaves, {"out": out, "h_n": h_n, "c_n": c_n})


def backend_layer(name: str) -> LayerFn:
    """The layer function of fusedrnn backend ``name`` (through the ops and autograd)."""

    def run(cell, x, h0, c0, weights, batch_sizes, reverse):
        return tuple(functional.layer(cell, x, h0, c0, weights, batch_sizes, reverse, backend=name))

    return run


def reference_layer(cell, x, h0, c0, weights, batch_sizes, reverse):
    """The differentiable reference forward (autograd gives its gradients)."""
    res = reference.sequence_forward(cell, x, h0, c0, weights, batch_sizes, reverse)
    return res.out, res.h_n, res.c_n


def torch_module(case: Case, dtype: torch.dtype = torch.float64, device="cpu") -> Optional[nn.RNNBase]:
    """The torch.nn module computing the case's cell (bidirectional for reverse), or None if torch has none."""
    twin = torch_twin(case.cell)
    if twin is None or case.peephole:  # torch.nn has no peepholes
        return None
    name, kwargs = twin
    kwargs.update(bias=case.layout.bias, bidirectional=case.layout.reverse, device=device, dtype=dtype)
    if case.proj_size:
        kwargs["proj_size"] = case.proj_size
    return getattr(nn, name)(case.shape.I, case.shape.H, **kwargs)


#: fusedrnn weight name -> torch.nn parameter name (layer 0; "_reverse" appended for reverse)
TORCH_NAMES = {"w_ih": "weight_ih_l0", "w_hh": "weight_hh_l0", "b_ih": "bias_ih_l0", "b_hh": "bias_hh_l0",
               "w_proj": "weight_hr_l0"}


def run_torch(problem: Problem, dtype: torch.dtype, device) -> Optional[Results]:
    """The case computed by torch.nn on the problem's weights, or None where torch lacks the cell."""
    case = problem.case
    module = torch_module(case, dtype, device)
    if module is None:
        return None
    reverse = case.layout.reverse
    suffix = "_reverse" if reverse else ""
    params = {k: getattr(module, TORCH_NAMES[k] + suffix) for k in TORCH_NAMES if k in problem.inputs}
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(problem.inputs[k])
    leaves = {k: v.to(device=device, dtype=dtype).requires_grad_()
              for k, v in problem.inputs.items() if k not in params}
    x, h0, c0 = leaves["x"], leaves["h0"], leaves.get("c0")

    def directions(state):  # [B, D] -> [1 or 2, B, D]; the unused forward direction starts at zero
        return torch.stack([torch.zeros_like(state), state]) if reverse else state[None]

    hx = (directions(h0), directions(c0)) if c0 is not None else directions(h0)
    seq = x if problem.lengths is None else pack_padded_sequence(x, torch.tensor(problem.lengths),
                                                                 enforce_sorted=False)
    out, state = module(seq, hx)
    if problem.lengths is not None:
        out = pad_packed_sequence(out, total_length=case.shape.T)[0]
    h_n, c_n = state if c0 is not None else (state, None)
    hout = h0.shape[-1]
    outputs = {"out": out[..., hout:] if reverse else out, "h_n": h_n[-1], "c_n": None if c_n is None else c_n[-1]}
    leaves.update(params)  # gradients of the parameters, under fusedrnn's names
    ordered = {k: leaves[k] for k in INPUTS if k in leaves}
    return _gradients(problem, ordered, outputs)



def modules_available() -> bool:
    """True once fusedrnn has its drop-in modules."""
    import fusedrnn

    return all(hasattr(fusedrnn, n) for n in ("LSTM", "GRU", "RNN"))


def make_module_problem(case: ModuleCase, dtype: torch.dtype) -> Problem:
    """Weights (a torch.nn state_dict), inputs and upstream gradients, rounded to ``dtype``."""
    seed = zlib.crc32(case.id.encode())
    with torch.random.fork_rng(devices=[]):  # torch.nn's own initialisation, without touching the caller's RNG
        torch.manual_seed(seed)
        state = {k: v.detach().to(dtype).to(torch.float64) for k, v in case.build(nn).state_dict().items()}
    layer = make_problem(case.layer_case, dtype)  # x, lengths and one direction's state, reused
    T, B, _, H = case.shape
    g = torch.Generator().manual_seed(seed)
    hout = layer.inputs["h0"].shape[-1]
    states = MODULE_LAYERS * 2

    def rand(*shape):
        return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1).to(dtype).to(torch.float64)

    inputs = {"x": layer.inputs["x"], "h0": rand(states, B, hout)}
    upstream = {"out": rand(T, B, 2 * hout), "h_n": rand(states, B, hout)}
    if case.cell.has_cell_state:
        inputs["c0"], upstream["c_n"] = rand(states, B, H), rand(states, B, H)
    inputs.update(state)
    return Problem(case, inputs, upstream, layer.lengths)


def run_module(problem: Problem, module: nn.Module, dtype: torch.dtype, device) -> Results:
    """Run ``module`` (loaded with the problem's weights) on its packed input; results as :func:`run_layer`'s."""
    module = module.to(device=device, dtype=dtype)
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(problem.inputs[name])
    leaves = {k: problem.inputs[k].to(device=device, dtype=dtype).requires_grad_()
              for k in ("x", "h0", "c0") if k in problem.inputs}
    hx = (leaves["h0"], leaves["c0"]) if "c0" in leaves else leaves["h0"]
    seq = pack_padded_sequence(leaves["x"], torch.tensor(problem.lengths), enforce_sorted=False)
    out, state = module(seq, hx)
    out = pad_packed_sequence(out, total_length=problem.case.shape.T)[0]
    h_n, c_n = state if "c0" in leaves else (state, None)
    leaves.update(params)
    return _gradients(problem, leaves, {"out": out, "h_n": h_n, "c_n": c_n})


#: a module parameter's name -> the quantity its gradient is reported under (all layers and directions)
_PARAMETER_QUANTITY = {"weight_ih": "grad_w_ih", "weight_hh": "grad_w_hh", "bias_ih": "grad_b_ih",
                       "bias_hh": "grad_b_hh", "weight_hr": "grad_w_proj", "weight_ch": "grad_w_peep"}


def quantity_of(name: str) -> str:
    """``grad_weight_ih_l1_reverse`` -> ``grad_w_ih``; a cell's extra weight (``grad_ln_weight_c_l0``) ->
    ``grad_w_extra``; other names unchanged."""
    if name.startswith("grad_"):
        stem = name[len("grad_"):].split("_l")[0]
        if any(stem == e.name for record in CELLS.values() for e in record.extra_weights):
            return "grad_w_extra"
        return _PARAMETER_QUANTITY.get(stem, name)
    return name
