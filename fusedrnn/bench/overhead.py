"""The per-call overhead group of ``python -m fusedrnn.bench``: models that call a layer one step at a time.

Attention decoders built from cells, beam search and sampling call a cell (or a whole stack on
one time step) once per token, on a few rows: there a call's fixed cost (argument checks,
backend selection, dispatch, autograd bookkeeping) weighs as much as its arithmetic, which the
layer groups (long sequences) never show.  Each case is timed for torch.nn's module and
fusedrnn's (the same class name, the same weights, backend ``"auto"``: what a user gets), in the
rounds of :mod:`fusedrnn.bench.rounds`, and reported as torch.nn's time / fusedrnn's, float32:

* ``cell``: one step of the cell module, ``cell(x, state)``, B = 1 and 16, H = 64 and 128, I = 96;
* ``layer``: a 2-layer stack called on one time step with its state, ``lstm(x[1, B, I], hx)``;
* ``sequence``: a 1-layer stack called on a few steps with its state, ``lstm(x[T, B, I], hx)``, T = 5 and
  20: a decoder or a streaming model feeding a layer a short chunk at a time;
* ``decoder`` (LSTM only): an attention decoder as the seq2seq pattern writes it, an embedding,
  an LSTMCell over ``[embedding; previous context]``, dot-product attention over 20 encoder
  outputs and a linear readout, stepping T = 20 tokens (B = 16, H = 128, vocabulary 1000): greedy
  decoding in inference, teacher forcing and a cross-entropy loss in training.

Inference runs under ``torch.no_grad()``; training is the forward and the gradients of the input
(cells and layers) and of every parameter.  Before timing, fusedrnn's forward is compared with
torch.nn's on the same inputs (float32 tolerances; the float64 check of the layer groups covers
the arithmetic): a case that disagrees is reported and not timed.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import cell_modules, modules
from ..testing import Shape
from .console import print_table
from .report import ratio_style, ratio_text, section, spread_text, us_text
from .module_bench import FUSEDRNN, Case, time_cases
from .module_bench import count as count_steps

KINDS = ("cell", "layer", "sequence", "decoder")
BATCHES = (1, 16)
HIDDEN_SIZES = (64, 128)
#: the ``sequence`` case's lengths (issue 17: "a whole small layer call (T <= 20, H <= 128)")
SEQUENCE_STEPS = (5, 20)
INPUT_SIZE = 96
LAYERS = 2
#: the decoder: B, H, embedding width, vocabulary, encoder outputs attended to, steps decoded
DECODER = dict(batch=16, hidden=128, embed=64, vocab=1000, source=20, steps=20)
#: the families timed unless --overhead names others (the issue's measurements are LSTM's)
DEFAULT_FAMILIES = ("lstm",)
#: float32 outputs of one step, or of a 20-step decoder, agree with torch.nn's to far better than this
TOLERANCE = dict(rtol=1e-4, atol=1e-4)

_CELLS = {"lstm": (nn.LSTMCell, cell_modules.LSTMCell), "gru": (nn.GRUCell, cell_modules.GRUCell),
          "rnn": (nn.RNNCell, cell_modules.RNNCell)}
_STACKS = {"lstm": (nn.LSTM, modules.LSTM), "gru": (nn.GRU, modules.GRU), "rnn": (nn.RNN, modules.RNN)}


def parse_families(text: str) -> List[str]:
    """``--overhead``'s value: comma-separated families of the cell table's built-in ones, or ``none``."""
    if text.strip() == "none":
        return []
    families = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in families if f not in _CELLS]
    if unknown or not families:
        raise ValueError(f"--overhead takes 'none' or comma-separated families of {', '.join(_CELLS)}; got {text!r}")
    return families


def cases(families: Sequence[str]) -> List[Case]:
    """The group's cases for ``families``, in table order."""
    out = [Case(kind, f, Shape(1, b, INPUT_SIZE, h)) for f in families for kind in ("cell", "layer")
           for b in BATCHES for h in HIDDEN_SIZES]
    out += [Case("sequence", f, Shape(t, b, INPUT_SIZE, h)) for f in families for t in SEQUENCE_STEPS
            for b in BATCHES for h in HIDDEN_SIZES]
    if "lstm" in families:
        d = DECODER
        out.append(Case("decoder", "lstm", Shape(d["steps"], d["batch"], d["embed"], d["hidden"])))
    return out


class AttentionDecoder(nn.Module):
    """Embedding, a cell over ``[embedding; previous context]``, dot-product attention, linear readout."""

    def __init__(self, cell_class: type, vocab: int, embed: int, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.cell = cell_class(embed + hidden, hidden)
        self.readout = nn.Linear(2 * hidden, vocab)

    def forward(self, enc: torch.Tensor, state, steps: int, teacher: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits ``[B, steps, vocab]``; feeds ``teacher``'s tokens when given, else its own greedy choices."""
        token = torch.zeros(enc.size(0), dtype=torch.long, device=enc.device)
        context = enc.new_zeros(enc.size(0), enc.size(2))
        logits = []
        for t in range(steps):
            state = self.cell(torch.cat([self.embed(token), context], dim=-1), state)
            h = state[0]
            weights = torch.softmax(torch.bmm(enc, h.unsqueeze(2)).squeeze(2), dim=-1)
            context = torch.bmm(weights.unsqueeze(1), enc).squeeze(1)
            step_logits = self.readout(torch.cat([h, context], dim=-1))
            logits.append(step_logits)
            token = teacher[:, t] if teacher is not None else step_logits.argmax(-1)
        return torch.stack(logits, 1)


def _tensors(value) -> List[torch.Tensor]:
    """The tensors of a module's output (``h``, ``(h, c)``, ``(out, (h_n, c_n))``), in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    return [t for v in value for t in _tensors(v)]


class OverheadBench:
    """One case: torch.nn's module and fusedrnn's with the same weights, and their inputs (a bench of
    :func:`fusedrnn.bench.rounds.measure_group`)."""

    def __init__(self, case: Case, device: torch.device, seed: int = 0):
        self.case, self.family, self.shape, self.device = case, case.family, case.shape, device
        self.dtype = torch.float32
        torch.manual_seed(seed)
        _, B, I, H = case.shape
        kw = dict(device=device, dtype=self.dtype)
        if case.kind == "decoder":
            d = DECODER
            pair = [AttentionDecoder(c, d["vocab"], d["embed"], H) for c in _CELLS["lstm"]]
            self.enc = torch.randn(B, d["source"], H, **kw)
            self.teacher = torch.randint(0, d["vocab"], (B, d["steps"]), device=device)
            self.state = (torch.randn(B, H, **kw), torch.randn(B, H, **kw))
        elif case.kind == "cell":
            pair = [c(I, H) for c in _CELLS[case.family]]
            self.x = torch.randn(B, I, **kw)
            self.state = tuple(torch.randn(B, H, **kw) for _ in range(2 if case.family == "lstm" else 1))
        else:
            layers = LAYERS if case.kind == "layer" else 1
            pair = [c(I, H, layers) for c in _STACKS[case.family]]
            self.x = torch.randn(case.shape[0], B, I, **kw)
            self.state = tuple(torch.randn(layers, B, H, **kw) for _ in range(2 if case.family == "lstm" else 1))
        pair[1].load_state_dict(pair[0].state_dict())
        self.modules = {impl: m.to(**kw) for impl, m in zip(("torch.nn", FUSEDRNN), pair)}
        if case.kind != "decoder":
            self.x_train = self.x.clone().requires_grad_()

    def _state(self):
        return self.state if len(self.state) == 2 else self.state[0]

    def forward(self, impl: str, train: bool) -> Callable[[], torch.Tensor]:
        """A callable returning what the case computes: the loss in training, the outputs in inference."""
        m = self.modules[impl]
        if self.case.kind == "decoder":
            steps = DECODER["steps"]
            if not train:
                return lambda: m(self.enc, self.state, steps)
            return lambda: F.cross_entropy(m(self.enc, self.state, steps, self.teacher).flatten(0, 1),
                                           self.teacher.flatten())
        if not train:
            return lambda: m(self.x, self._state())
        return lambda: sum(t.sum() for t in _tensors(m(self.x_train, self._state())))

    def call(self, impl: str, mode: str) -> Callable[[], object]:
        if mode == "inference":
            forward = self.forward(impl, train=False)

            def infer():
                with torch.no_grad():
                    return forward()

            return infer
        forward = self.forward(impl, train=True)
        inputs = list(self.modules[impl].parameters()) + ([] if self.case.kind == "decoder" else [self.x_train])
        return lambda: torch.autograd.grad(forward(), inputs)

    impls = ("torch.nn", FUSEDRNN)
    modes = ("inference", "training")

    def unsupported(self, impl: str) -> Optional[str]:
        return None

    def flops(self, mode: str) -> float:
        return 0.0  # a call's fixed cost is the point here, not its arithmetic

    def failures(self) -> dict:
        why = self.disagreement()
        return {FUSEDRNN: why} if why else {}

    def annotate(self, group: List[dict], mode: str) -> None:
        """Nothing beyond the common columns."""

    def memory(self, impl: str, mode: str) -> tuple:
        return None, None

    def disagreement(self) -> Optional[str]:
        """None when fusedrnn's forward matches torch.nn's on these inputs (teacher-forced for the
        decoder: greedy choices could differ by a tie), else what differs."""
        with torch.no_grad():
            if self.case.kind == "decoder":
                outs = [m(self.enc, self.state, DECODER["steps"], self.teacher) for m in self.modules.values()]
            else:
                outs = [self.modules[impl](self.x, self._state()) for impl in self.modules]
        try:
            torch.testing.assert_close(outs[1], outs[0], **TOLERANCE)
        except AssertionError as exc:
            return str(exc).splitlines()[0]
        return None


def run(families: Sequence[str], s, advance: Callable[[str], None] = lambda label: None) -> List[dict]:
    """Every case of ``families`` timed on the run's settings ``s``: result rows (those of
    :func:`fusedrnn.bench.rounds.result_row`, plus ``case``), torch.nn's row first in each group."""
    return time_cases(cases(families), lambda case: OverheadBench(case, s.device), s, advance)


def count(families: Sequence[str]) -> int:
    """Progress steps :func:`run` makes (one per case and mode)."""
    return count_steps(cases(families))


COLUMNS = ["case", "cell", "T,B,I,H", "mode", "impl", "median us", "q20-q80 us", "vs torch.nn", "note"]
CAPTION = ("per-call overhead, float32: one timed call = one cell step (cell), one 2-layer stack on one step "
           "(layer), one 1-layer stack on T steps (sequence), or 20 decoded tokens (decoder); training adds the gradients of the input and every "
           "parameter; vs torch.nn = torch.nn time / fusedrnn time, the median of its value in each round")


def _cells(r: dict) -> List[str]:
    return [r["case"], r["cell"], f"{r['T']},{r['B']},{r['I']},{r['H']}", r["mode"], r["impl"], us_text(r["median_ms"]),
            spread_text(r, us_text),
            ratio_text(r.get("ratio_vs_torch")), "" if r["status"] == "ok" else r["status"]]


def print_rows(rows: Sequence[dict], title: str) -> None:
    print_table(title, COLUMNS, [_cells(r) for r in rows], [ratio_style(r) for r in rows], caption=CAPTION)


def markdown(rows: Sequence[dict]) -> str:
    """The group's section of the run's markdown report (empty when it did not run)."""
    if not rows:
        return ""
    return section("Per-call overhead", COLUMNS, [_cells(r) for r in rows], CAPTION)
