"""Client code written against torch.nn's RNN classes, run on models converted by fusedrnn.convert.

Each pattern is taken from a library whose real models broke on converted
models before fusedrnn's classes subclassed torch.nn's (issue 12, item 5):
OpenNMT-py's decoder choosing the form of ``hx`` by ``isinstance(rnn, nn.GRU)``,
ESPnet's beam search choosing the state layout by ``isinstance(rnn, nn.LSTM)``,
ESPnet's initialiser setting the forget-gate bias of every ``nn.LSTM`` it
finds, pytorch-forecasting's ``nn.LSTM``/``nn.GRU`` subclasses with their own
``forward`` (zero-length sequences), and DataParallel's replicas.  Each test
runs the client code on a torch.nn model and on its converted copy and
compares: float64, the project's 1e-10 tolerances (``close``), unless stated.
The ``isinstance`` checks and torch.nn's semi-public helpers that such code
calls are tested on fusedrnn's own classes in test_torch_nn_helpers.py.

Plain fusedrnn modules' repr, state_dict round trips, pickling and dtype
moves are tested against torch.nn in test_module_parameters.py and test_cell_modules.py; here
they are tested on converted client models, subclasses included.
"""

from __future__ import annotations

import abc
import copy
import io
import pickle
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import rnn as rnn_utils

import fusedrnn
from fusedrnn import _converted_classes

pytestmark = pytest.mark.usefixtures("single_thread", "quiet_backend_fallback")

I, H, B, T, V = 3, 6, 4, 5, 7
F64 = torch.float64


def converted_copy(model: nn.Module) -> nn.Module:
    """fusedrnn.convert on a deep copy (same weights), requiring that nothing is left unconverted."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        return fusedrnn.convert(copy.deepcopy(model))


def fused_modules(model: nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, (fusedrnn.modules.FusedRNNBase,
                                                        fusedrnn.cell_modules.FusedRNNCellBase))]


def loss_and_grads(model: nn.Module, outputs, inputs):
    """A loss mixing every output with fixed random weights, and its gradients (inputs, then
    parameters; zeros for those the outputs do not depend on, e.g. a skipped encoder)."""
    g = torch.Generator().manual_seed(0)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outputs)
    return torch.autograd.grad(loss, [*inputs, *model.parameters()], allow_unused=True, materialize_grads=True)


def flat(outputs):
    """Tensors of a nested output (tuples of tensors and PackedSequences) in order."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, rnn_utils.PackedSequence):
        return [outputs.data]
    return [t for o in outputs for t in flat(o)]


# ----------------------------------------------------------------------------
# OpenNMT-py: the decoder passes h (GRU) or (h, c) (LSTM) by isinstance(self.rnn, nn.GRU)
# ----------------------------------------------------------------------------


class OnmtStyleSeq2Seq(nn.Module):
    """OpenNMT-py's RNNDecoderBase/StdRNNDecoder: the state is always kept as a tuple; a GRU gets its
    only element, by ``isinstance(self.rnn, nn.GRU)`` (a tuple given to a GRU raises TypeError)."""

    def __init__(self, rnn_cls):
        super().__init__()
        self.encoder = rnn_cls(I, H, num_layers=2, bidirectional=True)
        self.rnn = rnn_cls(I, 2 * H, num_layers=2)
        self.generator = nn.Linear(2 * H, V)

    @staticmethod
    def _fix_enc_hidden(hidden):
        # the bidirectional encoder's [layers*2, B, H] becomes [layers, B, 2H]
        return torch.cat([hidden[0:hidden.size(0):2], hidden[1:hidden.size(0):2]], 2)

    def forward(self, src, tgt):
        _, enc_hidden = self.encoder(src)
        if isinstance(enc_hidden, tuple):  # LSTM
            hidden = tuple(self._fix_enc_hidden(h) for h in enc_hidden)
        else:  # GRU
            hidden = (self._fix_enc_hidden(enc_hidden),)
        if isinstance(self.rnn, nn.GRU):
            out, dec_state = self.rnn(tgt, hidden[0])
        else:
            out, dec_state = self.rnn(tgt, hidden)
        return self.generator(out), dec_state


@pytest.mark.parametrize("rnn_cls", [nn.GRU, nn.LSTM], ids=["gru", "lstm"])
def test_onmt_decoder_passes_the_state_torch_would(rnn_cls, close):
    model = OnmtStyleSeq2Seq(rnn_cls).double()
    fused = converted_copy(model)
    assert len(fused_modules(fused)) == 2
    src, tgt = torch.randn(T, B, I, dtype=F64, requires_grad=True), torch.randn(T - 1, B, I, dtype=F64)
    expected = flat(model(src, tgt))
    actual = flat(fused(src, tgt))
    for a, e in zip(actual, expected):
        close(a, e)
    for a, e in zip(loss_and_grads(fused, actual, [src]), loss_and_grads(model, expected, [src])):
        close(a, e)


# ----------------------------------------------------------------------------
# ESPnet: beam search reorders the decoder state by isinstance(rnn, nn.LSTM)
# ----------------------------------------------------------------------------


class EspnetStyleDecoder(nn.Module):
    """A token decoder scored by a beam search; the state's layout ((h, c) or h) is chosen by
    ``isinstance(self.rnn, nn.LSTM)``, as ESPnet's RNN decoders do (a tuple treated as a tensor
    raises AttributeError)."""

    def __init__(self, rnn_cls):
        super().__init__()
        self.embed = nn.Embedding(V, I)
        self.rnn = rnn_cls(I, H, num_layers=2)
        self.output = nn.Linear(H, V)

    def init_state(self, batch, dtype):
        h = torch.zeros(self.rnn.num_layers, batch, H, dtype=dtype)
        return (h, torch.zeros_like(h)) if isinstance(self.rnn, nn.LSTM) else h

    def select_state(self, state, ids):
        if isinstance(self.rnn, nn.LSTM):
            h, c = state
            return h.index_select(1, ids), c.index_select(1, ids)
        return state.index_select(1, ids)

    def score(self, tokens, state):
        out, state = self.rnn(self.embed(tokens).unsqueeze(0), state)
        return self.output(out[0]).log_softmax(-1), state


def beam_search(decoder: EspnetStyleDecoder, beam: int, steps: int, dtype):
    scores = torch.zeros(beam, dtype=dtype)
    tokens = torch.zeros(beam, dtype=torch.long)
    state = decoder.init_state(beam, dtype)
    history = []
    for _ in range(steps):
        logp, state = decoder.score(tokens, state)
        best, flat_ids = (scores[:, None] + logp).view(-1).topk(beam)
        hyp, tokens = flat_ids // V, flat_ids % V
        scores, state = best, decoder.select_state(state, hyp)
        history.append((hyp, tokens))
    return scores, history


@pytest.mark.parametrize("rnn_cls", [nn.LSTM, nn.GRU], ids=["lstm", "gru"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=["float64", "half"])
def test_espnet_beam_search_keeps_the_state_layout(rnn_cls, dtype, close):
    """Also after ``.half()`` (nn.Module._apply on the converted model): half precision is compared
    at (1e-2, 1e-2), its epsilon being about 1e-3 and the errors compounding over the steps."""
    decoder = EspnetStyleDecoder(rnn_cls).double()
    fused = converted_copy(decoder).to(dtype)
    decoder = decoder.to(dtype)
    assert all(p.dtype == dtype for p in fused.rnn._flat_weights)
    assert [id(p) for p in fused.rnn._flat_weights] == [id(p) for p in fused.rnn.parameters()]
    with torch.no_grad():
        expected_scores, expected_history = beam_search(decoder, beam=3, steps=4, dtype=dtype)
        actual_scores, actual_history = beam_search(fused, beam=3, steps=4, dtype=dtype)
    if dtype == torch.float16:
        torch.testing.assert_close(actual_scores, expected_scores, rtol=1e-2, atol=1e-2)
        return  # near-ties may rank differently in half precision
    close(actual_scores, expected_scores)
    for (a_hyp, a_tok), (e_hyp, e_tok) in zip(actual_history, expected_history):
        assert torch.equal(a_hyp, e_hyp) and torch.equal(a_tok, e_tok)


# ----------------------------------------------------------------------------
# ESPnet: the initialiser sets the forget-gate bias of every nn.LSTM / nn.LSTMCell it finds
# ----------------------------------------------------------------------------


class EspnetStyleModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.LSTM(I, H, num_layers=2, bidirectional=True)
        self.dec = nn.ModuleList([nn.LSTMCell(2 * H, H), nn.LSTMCell(H, H)])
        self.att = nn.GRU(H, H)
        self.out = nn.Linear(H, V)


def set_forget_bias_to_one(bias):
    n = bias.size(0)
    bias.data[n // 4:n // 2].fill_(1.0)


def espnet_style_initialize(model):
    """ESPnet's lecun_normal_init_parameters, then the forget-gate biases, found by isinstance."""
    for p in model.parameters():
        if p.dim() == 1:
            p.data.zero_()
        else:
            fan_in = p.size(1)
            p.data.normal_(0, 1.0 / fan_in ** 0.5)
    for m in model.modules():
        if isinstance(m, nn.LSTM):
            for name, p in m.named_parameters():
                if name.startswith("bias_ih"):
                    set_forget_bias_to_one(p)
        elif isinstance(m, nn.LSTMCell):
            set_forget_bias_to_one(m.bias_ih)


def test_espnet_initializer_sets_the_forget_bias_on_converted_models():
    model = EspnetStyleModel().double()
    fused = converted_copy(model)
    assert len(fused_modules(fused)) == 4
    torch.manual_seed(1)
    espnet_style_initialize(model)
    torch.manual_seed(1)
    espnet_style_initialize(fused)
    for (name, a), (_, e) in zip(fused.named_parameters(), model.named_parameters()):
        assert torch.equal(a, e), name
    # the LSTMs' forget biases were reached (a skipped module would keep its zeros there)
    assert bool((fused.enc.bias_ih_l1_reverse[H:2 * H] == 1).all()) and bool((fused.dec[1].bias_ih[H:2 * H] == 1).all())
    assert bool((fused.att.bias_ih_l0 == 0).all())  # the GRU is no nn.LSTM


# ----------------------------------------------------------------------------
# pytorch-forecasting: nn.LSTM / nn.GRU subclasses with their own forward (zero lengths)
# ----------------------------------------------------------------------------


class ForecastingRNN(abc.ABC, nn.RNNBase):
    """pytorch-forecasting's rnn.RNN: a forward that accepts sequence lengths, zeros included (an
    empty history leaves the initial state), through ``super().forward`` on a PackedSequence."""

    @abc.abstractmethod
    def handle_no_encoding(self, hidden_state, no_encoding, initial_hidden_state):
        pass

    @abc.abstractmethod
    def init_hidden_state(self, x):
        pass

    @abc.abstractmethod
    def repeat_interleave(self, hidden_state, n_samples):
        pass

    def forward(self, x, hx=None, lengths=None, enforce_sorted=True):
        if isinstance(x, rnn_utils.PackedSequence) or lengths is None:
            return super().forward(x, hx=hx)
        max_length = lengths.max()
        if max_length == 0:
            batch = lengths.size(0)
            shape = (batch, x.size(1), self.hidden_size) if self.batch_first else (x.size(0), batch, self.hidden_size)
            return torch.zeros(shape, dtype=x.dtype, device=x.device), self.init_hidden_state(x)
        pack_lengths = lengths.where(lengths > 0, torch.ones_like(lengths))
        packed_out, hidden_state = super().forward(
            rnn_utils.pack_padded_sequence(x, pack_lengths.cpu(), enforce_sorted=enforce_sorted,
                                           batch_first=self.batch_first),
            hx=hx,
        )
        if lengths.min() == 0:
            no_encoding = (lengths == 0)[None, :, None]
            initial = self.init_hidden_state(x) if hx is None else hx
            hidden_state = self.handle_no_encoding(hidden_state, no_encoding, initial)
        out, _ = rnn_utils.pad_packed_sequence(packed_out, batch_first=self.batch_first,
                                               total_length=x.size(1 if self.batch_first else 0))
        return out, hidden_state


class ForecastingLSTM(ForecastingRNN, nn.LSTM):
    def __init__(self, *args, name="encoder", **kwargs):
        super().__init__(*args, **kwargs)
        self.name = name  # an attribute of the subclass's own

    def handle_no_encoding(self, hidden_state, no_encoding, initial_hidden_state):
        return tuple(torch.where(no_encoding, init, state) for state, init in zip(hidden_state, initial_hidden_state))

    def init_hidden_state(self, x):
        batch = x.size(0) if self.batch_first else x.size(1)
        h = torch.zeros(self.num_layers * (2 if self.bidirectional else 1), batch, self.hidden_size,
                        dtype=x.dtype, device=x.device)
        return h, h

    def repeat_interleave(self, hidden_state, n_samples):
        return tuple(h.repeat_interleave(n_samples, 1) for h in hidden_state)


class ForecastingGRU(ForecastingRNN, nn.GRU):
    def __init__(self, *args, name="encoder", **kwargs):
        super().__init__(*args, **kwargs)
        self.name = name

    def handle_no_encoding(self, hidden_state, no_encoding, initial_hidden_state):
        return torch.where(no_encoding, initial_hidden_state, hidden_state)

    def init_hidden_state(self, x):
        batch = x.size(0) if self.batch_first else x.size(1)
        return torch.zeros(self.num_layers, batch, self.hidden_size, dtype=x.dtype, device=x.device)

    def repeat_interleave(self, hidden_state, n_samples):
        return hidden_state.repeat_interleave(n_samples, 1)


class ForecastingModel(nn.Module):
    def __init__(self, rnn_cls):
        super().__init__()
        self.encoder = rnn_cls(I, H, num_layers=2, batch_first=True, name="lstm_encoder")
        self.decoder = rnn_cls(I, H, num_layers=2, batch_first=True, name="lstm_decoder")
        self.head = nn.Linear(H, 1)

    def forward(self, x_enc, enc_lengths, x_dec, dec_lengths, n_samples=1):
        _, state = self.encoder(x_enc, lengths=enc_lengths, enforce_sorted=False)
        state = self.encoder.repeat_interleave(state, n_samples)
        out, _ = self.decoder(x_dec.repeat_interleave(n_samples, 0), state,
                              lengths=dec_lengths.repeat_interleave(n_samples), enforce_sorted=False)
        return self.head(out), state


@pytest.fixture(params=[ForecastingLSTM, ForecastingGRU], ids=["lstm", "gru"])
def forecasting_pair(request):
    model = ForecastingModel(request.param).double()
    return model, converted_copy(model)


def test_forecasting_subclass_is_converted_into_a_class_deriving_from_both(forecasting_pair):
    model, fused = forecasting_pair
    user_cls = type(model.encoder)
    fused_twin = fusedrnn.LSTM if user_cls is ForecastingLSTM else fusedrnn.GRU
    assert type(fused.encoder) is type(fused.decoder)  # one generated class, cached
    mro = type(fused.encoder).__mro__
    # the user's classes first, then fusedrnn's where torch.nn's twin was
    assert mro[1:4] == (user_cls, ForecastingRNN, abc.ABC)
    assert mro.index(fused_twin) < mro.index(fusedrnn.modules.FusedRNNBase) < mro.index(nn.RNNBase)
    assert isinstance(fused.encoder, user_cls) and isinstance(fused.encoder, fused_twin)
    assert fused.encoder.name == "lstm_encoder" and fused.decoder.name == "lstm_decoder"
    assert repr(fused.encoder) == f"Fused{repr(model.encoder)}"


@pytest.mark.parametrize("enc_lengths, dec_lengths", [
    ([5, 0, 3, 5], [2, 3, 0, 1]),  # some empty histories: the initial state is kept for them
    ([0, 0, 0, 0], [3, 3, 3, 3]),  # all empty: forward returns zeros without running the layer
], ids=["some_zero", "all_zero"])
def test_forecasting_subclass_matches_torch_with_zero_lengths(forecasting_pair, enc_lengths, dec_lengths,
                                                             monkeypatch, close):
    model, fused = forecasting_pair
    x_enc = torch.randn(B, T, I, dtype=F64, requires_grad=True)
    x_dec = torch.randn(B, 3, I, dtype=F64, requires_grad=True)
    args = (x_enc, torch.tensor(enc_lengths), x_dec, torch.tensor(dec_lengths))
    expected = flat(model(*args, n_samples=2))
    expected_grads = loss_and_grads(model, expected, [x_enc, x_dec])
    # the subclass's super().forward must run fusedrnn's forward, never torch.nn's
    for torch_cls in (nn.LSTM, nn.GRU):
        monkeypatch.setattr(torch_cls, "forward", lambda *a, **k: pytest.fail("torch.nn's forward ran"))
    calls = []
    fused_forward = fusedrnn.modules.FusedRNNBase.forward
    monkeypatch.setattr(fusedrnn.modules.FusedRNNBase, "forward",
                        lambda self, *a, **k: calls.append(self) or fused_forward(self, *a, **k))
    actual = flat(fused(*args, n_samples=2))
    assert fused.decoder in calls and (fused.encoder in calls) == (max(enc_lengths) > 0)
    for a, e in zip(actual, expected):
        close(a, e)
    for a, e in zip(loss_and_grads(fused, actual, [x_enc, x_dec]), expected_grads):
        close(a, e)


def forecasting_inputs():
    return (torch.randn(B, T, I, dtype=F64), torch.tensor([5, 0, 3, 5]),
            torch.randn(B, 3, I, dtype=F64), torch.tensor([2, 3, 1, 1]))


def clone_by_torch_save(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)  # a whole module: weights_only cannot load it


@pytest.mark.parametrize("clone", [clone_by_torch_save, lambda m: pickle.loads(pickle.dumps(m)), copy.deepcopy],
                         ids=["torch_save", "pickle", "deepcopy"])
def test_converted_subclass_serialises(forecasting_pair, clone, close):
    _, fused = forecasting_pair
    copy_ = clone(fused)
    assert type(copy_.encoder) is type(fused.encoder) and copy_.encoder.name == "lstm_encoder"
    assert all(a is not b and torch.equal(a, b) for a, b in zip(copy_.parameters(), fused.parameters()))
    inputs = forecasting_inputs()
    with torch.no_grad():
        for a, e in zip(flat(copy_(*inputs)), flat(fused(*inputs))):
            close(a, e)


def test_converted_subclass_unpickles_where_its_class_was_never_generated(forecasting_pair, monkeypatch, close):
    """A fresh process has no generated classes: unpickling regenerates the class from its bases."""
    model, fused = forecasting_pair
    user_cls = type(model.encoder)
    fused_twin = fusedrnn.LSTM if user_cls is ForecastingLSTM else fusedrnn.GRU
    data = pickle.dumps(fused)
    monkeypatch.setattr(_converted_classes, "_CACHE", {})
    loaded = pickle.loads(data)
    generated = type(loaded.encoder)
    assert generated is not type(fused.encoder) and generated.__name__ == type(fused.encoder).__name__
    assert generated.__mro__[1:] == type(fused.encoder).__mro__[1:]
    assert _converted_classes._CACHE == {(user_cls, fused_twin): generated}
    inputs = forecasting_inputs()
    with torch.no_grad():
        for a, e in zip(flat(loaded(*inputs)), flat(fused(*inputs))):
            close(a, e)


def test_converted_subclass_state_dict_round_trips_both_ways(forecasting_pair, close):
    model, fused = forecasting_pair
    torch_again = copy.deepcopy(model)
    for p in torch_again.parameters():
        p.data.normal_()
    torch_again.load_state_dict(fused.state_dict(), strict=True)  # fusedrnn -> torch.nn
    fused_again = converted_copy(ForecastingModel(type(model.encoder)).double())
    fused_again.load_state_dict(model.state_dict(), strict=True)  # torch.nn -> fusedrnn
    assert list(fused.state_dict()) == list(model.state_dict())
    inputs = forecasting_inputs()
    with torch.no_grad():
        expected = flat(model(*inputs))
        for other in (torch_again, fused_again):
            for a, e in zip(flat(other(*inputs)), expected):
                close(a, e)


class ZoneoutLSTMCell(nn.LSTMCell):
    """A cell subclass (zoneout, as speech toolkits apply it): its forward wraps ``super().forward``,
    and draws random masks in training."""

    def __init__(self, *args, zoneout=0.25, **kwargs):
        super().__init__(*args, **kwargs)
        self.zoneout = zoneout

    def forward(self, input, hx):
        h, c = super().forward(input, hx)
        if not self.training:
            return h, c
        keep_h = torch.rand_like(h) < self.zoneout
        keep_c = torch.rand_like(c) < self.zoneout
        return torch.where(keep_h, hx[0], h), torch.where(keep_c, hx[1], c)


def test_cell_subclass_is_converted_and_steps_like_torch(close):
    cell = ZoneoutLSTMCell(I, H, zoneout=0.5).double()
    fused = converted_copy(cell)
    assert isinstance(fused, ZoneoutLSTMCell) and isinstance(fused, fusedrnn.LSTMCell) and fused.zoneout == 0.5
    x = torch.randn(T, B, I, dtype=F64, requires_grad=True)
    results = []
    for module in (cell, fused):
        torch.manual_seed(2)  # the same zoneout masks: neither cell draws random numbers itself
        state = (torch.zeros(B, H, dtype=F64), torch.zeros(B, H, dtype=F64))
        outputs = []
        for t in range(T):
            state = module(x[t], state)
            outputs.append(state[0])
        outputs = [torch.stack(outputs), state[1]]
        results.append((outputs, loss_and_grads(module, outputs, [x])))
    (expected, expected_grads), (actual, actual_grads) = results
    for a, e in zip(actual + list(actual_grads), expected + list(expected_grads)):
        close(a, e)


# ----------------------------------------------------------------------------
# torch.nn.DataParallel: torch.nn.parallel.replicate's steps on fusedrnn's modules
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("module", [fusedrnn.LSTM(I, H, num_layers=2, proj_size=2), fusedrnn.GRU(I, H),
                                    fusedrnn.LSTMCell(I, H, peephole=True)],
                         ids=lambda m: type(m).__name__)
def test_data_parallel_replica_runs_like_the_original(module, close):
    """torch.nn.parallel.replicate's steps on the CPU: _replicate_for_data_parallel, then the
    parameters set as non-leaf tensors on the replica; the replica computes what the original
    does, and the gradients reach the original's parameters."""
    module = module.double()
    replica = module._replicate_for_data_parallel()
    assert replica._parameters == {} and len(dict(module.named_parameters())) > 0
    for name, p in module.named_parameters():
        setattr(replica, name, p * 1)  # as replicate does: a broadcast copy, not a leaf
    x = torch.randn(B, I, dtype=F64) if isinstance(module, nn.RNNCellBase) else torch.randn(T, B, I, dtype=F64)
    expected = flat(module(x))
    actual = flat(replica(x))
    for a, e in zip(actual, expected):
        close(a, e)
    for a, e in zip(loss_and_grads(module, actual, []), loss_and_grads(module, expected, [])):
        close(a, e)
