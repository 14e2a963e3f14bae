"""What a recurrent cell is, independently of how any backend computes it.

A :class:`CellSpec` names a cell family (``lstm``, ``gru``, ``rnn``) and its
variant (``mode``).  Everything else that differs between cells and that more
than one layer of the package needs (how many gate blocks the weight matrices
stack, whether there is a cell state, how wide the saved activations are)
is derived here, once.

Equations (docs/design.md section 4; PyTorch's gate order is the contract):

* ``rnn``  (G=1), modes ``tanh`` / ``relu``:  ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``
* ``lstm`` (G=4, blocks i, f, g, o), mode ``lstm``::

      i = σ(a_i [+ w_ci*c]), f = σ(a_f [+ w_cf*c]), g = tanh(a_g)
      c' = f*c + i*g
      o = σ(a_o [+ w_co*c'])
      h' = o*tanh(c')            (then h' = W_hr h' with proj_size)

  the bracketed terms only with peepholes (``weight_ch``, blocks i, f, o).
* ``gru``  (G=3, blocks r, z, n), modes ``reset_after`` (PyTorch, cuDNN) and
  ``reset_before`` (Cho et al. 2014, the seed's form)::

      r = σ(a_r), z = σ(a_z)
      reset_after:  n = tanh(W_in x + b_in + r*(W_hn h + b_hn))
      reset_before: n = tanh(W_in x + b_in + W_hn (r*h) + b_hn)
      h' = (1-z)*n + z*h

  The seed writes ``h' = (1-z)*h + z*n``: the same function with z relabelled
  as 1-z.  We keep PyTorch's convention for both forms.

Saved activations ("workspace"), one row per input row, ``workspace_blocks * H``
wide, written by every backend's forward in this layout so the fake kernels
know its shape and tests can compare backends:

* lstm: ``[i, f, g, o, c']`` (gate activations and the new cell state)
* gru:  ``[r, z, n, k]`` with ``k = W_hn h + b_hn`` (reset_after) or ``k = r*h``
  (reset_before): the operand the backward needs for the n-gate's hidden part
* rnn:  nothing (the activation's derivative follows from the output itself)
"""

from __future__ import annotations

from dataclasses import dataclass

FAMILIES = ("lstm", "gru", "rnn")

_MODES = {
    "lstm": ("lstm",),
    "gru": ("reset_after", "reset_before"),
    "rnn": ("tanh", "relu"),
}
_GATES = {"lstm": 4, "gru": 3, "rnn": 1}
_WORKSPACE_BLOCKS = {"lstm": 5, "gru": 4, "rnn": 0}


@dataclass(frozen=True)
class CellSpec:
    """A cell family and its variant; hashable, so it can key caches."""

    family: str
    mode: str

    def __post_init__(self):
        if self.family not in _MODES:
            raise ValueError(f"unknown cell family {self.family!r}; expected one of {FAMILIES}")
        if self.mode not in _MODES[self.family]:
            raise ValueError(
                f"unknown mode {self.mode!r} for cell family {self.family!r}; "
                f"expected one of {_MODES[self.family]}"
            )

    @property
    def gates(self) -> int:
        """Number of gate blocks stacked in ``weight_ih`` / ``weight_hh``."""
        return _GATES[self.family]

    @property
    def has_cell_state(self) -> bool:
        return self.family == "lstm"

    @property
    def workspace_blocks(self) -> int:
        """Width of the saved activations, in units of hidden_size."""
        return _WORKSPACE_BLOCKS[self.family]

    @property
    def peephole_blocks(self) -> int:
        """Blocks of the diagonal peephole vector ``weight_ch`` (i, f, o)."""
        return 3 if self.family == "lstm" else 0

    def __str__(self) -> str:
        return self.family if self.mode == self.family else f"{self.family}[{self.mode}]"


def modes(family: str) -> tuple:
    return _MODES[family]


def all_specs() -> list:
    return [CellSpec(f, m) for f in FAMILIES for m in _MODES[f]]
