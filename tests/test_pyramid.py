"""PyramidLSTM / PyramidGRU against a plain loop of torch.nn layers with explicit reshapes.

The oracle runs every sequence on its own (batch of one, exactly its length),
through one-layer ``torch.nn.LSTM``/``GRU`` modules holding copies of the
pyramid's per-level weights, and concatenates ``r`` consecutive outputs
between levels by slicing (``cat(y[0::r], y[1::r], ...)``), dropping the
trailing steps that do not fill a group: the documented odd-length choice.
So it shares no code with fusedrnn.pyramid's reshape, packing or length
bookkeeping.  Outputs (zeros past each reduced length), reduced lengths, final
states and the gradients of the input and of every parameter are compared, in
float64 (1e-10) and float32 (1e-5).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from fusedrnn.pyramid import PyramidGRU, PyramidLSTM
from conftest import assert_close

pytestmark = pytest.mark.usefixtures("single_thread")

PYRAMIDS = {"lstm": PyramidLSTM, "gru": PyramidGRU}
TORCH_LAYERS = {"lstm": nn.LSTM, "gru": nn.GRU}


def torch_levels(model) -> list:
    """One torch.nn layer per pyramid level, with the level's weights copied in (its state_dict loads as is)."""
    family = "lstm" if isinstance(model, PyramidLSTM) else "gru"
    levels = []
    for level in model.layers:
        twin = TORCH_LAYERS[family](level.input_size, level.hidden_size, bidirectional=level.bidirectional,
                                    dtype=level.weight_ih_l0.dtype)
        twin.load_state_dict(level.state_dict())
        levels.append(twin)
    return levels


def oracle(levels, x, lengths, reduction):
    """Each sequence alone through the torch.nn levels: padded top outputs [T', B, D] and final states."""
    steps = x.shape[0] // reduction ** (len(levels) - 1)
    outputs, finals = [], []
    for b, n in enumerate(lengths):
        y = x[:n, b : b + 1]
        for k, level in enumerate(levels):
            if k > 0:
                kept = (y.shape[0] // reduction) * reduction  # trailing steps that do not fill a group: dropped
                y = torch.cat([y[j:kept:reduction] for j in range(reduction)], dim=-1)
            y, state = level(y)
        outputs.append(nn.functional.pad(y[:, 0], (0, 0, 0, steps - y.shape[0])))  # zeros past the length
        finals.append(state)
    out = torch.stack(outputs, dim=1)
    if isinstance(finals[0], tuple):
        return out, tuple(torch.cat([f[i] for f in finals], dim=1) for i in range(2))
    return out, torch.cat(finals, dim=1)


def state_tensors(h_n):
    return list(h_n) if isinstance(h_n, tuple) else [h_n]


# (family, bidirectional, reduction, num_layers, T, B, I, H, layout): layout is how the batch is given
CASES = [
    pytest.param("lstm", True, 2, 3, 13, 5, 3, 37, "lengths", id="lstm-bi-r2-L3-T13-H37-lengths"),
    pytest.param("lstm", True, 2, 3, 13, 5, 3, 37, "packed", id="lstm-bi-r2-L3-T13-H37-packed"),
    pytest.param("lstm", True, 2, 2, 9, 5, 3, 7, "full", id="lstm-bi-r2-L2-T9-full"),
    pytest.param("lstm", True, 2, 2, 9, 5, 3, 7, "batch_first", id="lstm-bi-r2-L2-T9-batch_first-lengths"),
    pytest.param("lstm", False, 3, 2, 11, 4, 3, 6, "packed", id="lstm-uni-r3-L2-T11-packed"),
    pytest.param("lstm", True, 2, 1, 1, 3, 3, 5, "full", id="lstm-bi-L1-T1"),
    pytest.param("gru", True, 2, 3, 13, 5, 3, 37, "lengths", id="gru-bi-r2-L3-T13-H37-lengths"),
    pytest.param("gru", True, 2, 3, 13, 5, 3, 37, "packed", id="gru-bi-r2-L3-T13-H37-packed"),
    pytest.param("gru", True, 3, 2, 10, 5, 4, 6, "full", id="gru-bi-r3-L2-T10-full"),
    pytest.param("gru", False, 2, 2, 7, 3, 3, 5, "batch_first", id="gru-uni-r2-L2-T7-batch_first-lengths"),
]


def random_lengths(T, B, shortest):
    """Unsorted lengths in [shortest, T], the full length T among them."""
    lengths = torch.randint(shortest, T + 1, (B,))
    lengths[torch.randint(0, B, ())] = T
    return lengths


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("family, bidirectional, reduction, num_layers, T, B, I, H, layout", CASES)
def test_matches_torch_loop(family, bidirectional, reduction, num_layers, T, B, I, H, layout, dtype):
    model = PYRAMIDS[family](I, H, num_layers=num_layers, reduction=reduction, bidirectional=bidirectional,
                             batch_first=layout == "batch_first", dtype=dtype)
    levels = torch_levels(model)
    x = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
    lengths = torch.full((B,), T) if layout == "full" else random_lengths(T, B, reduction ** (num_layers - 1))
    reduced = lengths // reduction ** (num_layers - 1)

    if layout == "packed":
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        result = model(packed)
        assert isinstance(result.output, PackedSequence)
        assert torch.equal(result.output.sorted_indices, packed.sorted_indices)
        out, out_lengths = pad_packed_sequence(result.output, total_length=T // reduction ** (num_layers - 1))
        assert torch.equal(out_lengths, reduced)
    elif layout == "batch_first":
        result = model(x.transpose(0, 1), lengths)
        out = result.output.transpose(0, 1)
    elif layout == "full":
        result = model(x)
        out = result.output
    else:
        result = model(x, lengths.tolist())
        out = result.output
    assert torch.equal(result.lengths, reduced)

    expected, expected_state = oracle(levels, x, lengths.tolist(), reduction)
    assert out.shape == expected.shape
    assert_close(out, expected, msg="top-level outputs")
    for got, want in zip(state_tensors(result.h_n), state_tensors(expected_state)):
        assert_close(got, want, msg="final state of the top level")

    # one random upstream gradient for the outputs and the final states, the same on both sides
    weights = [torch.randn_like(t) for t in [expected, *state_tensors(expected_state)]]

    def loss(tensors):
        return sum((t * w).sum() for t, w in zip(tensors, weights))

    grad_x, *grad_params = torch.autograd.grad(loss([out, *state_tensors(result.h_n)]), [x, *model.parameters()])
    want_x, *want_params = torch.autograd.grad(
        loss([expected, *state_tensors(expected_state)]), [x, *(p for level in levels for p in level.parameters())]
    )
    assert_close(grad_x, want_x, msg="grad of the input")
    names = [name for name, _ in model.named_parameters()]
    for name, got, want in zip(names, grad_params, want_params):
        assert_close(got, want, msg=f"grad of {name}")


def test_padded_and_packed_agree_on_odd_lengths():
    """The odd-length rule is the same whichever way the batch comes: padded with lengths, or packed."""
    model = PyramidLSTM(3, 5, num_layers=3, dtype=torch.float64)
    x = torch.randn(15, 4, 3, dtype=torch.float64)
    lengths = torch.tensor([7, 15, 5, 11])  # all odd: every level drops a trailing step somewhere
    padded = model(x, lengths)
    packed = model(pack_padded_sequence(x, lengths, enforce_sorted=False))
    unpacked, unpacked_lengths = pad_packed_sequence(packed.output, total_length=padded.output.shape[0])
    assert torch.equal(padded.lengths, torch.tensor([1, 3, 1, 2]))
    assert torch.equal(unpacked_lengths, padded.lengths) and torch.equal(packed.lengths, padded.lengths)
    assert_close(unpacked, padded.output)
    for a, b in zip(packed.h_n, padded.h_n):
        assert_close(a, b)


def test_steps_past_a_length_do_not_matter():
    """What lies in the padding past each length changes nothing."""
    model = PyramidGRU(3, 6, num_layers=2, dtype=torch.float64)
    x = torch.randn(9, 3, 3, dtype=torch.float64)
    lengths = torch.tensor([9, 5, 3])
    noisy = x.clone()
    noisy[5:, 1] = -7.0
    noisy[3:, 2] = 42.0
    a, b = model(x, lengths), model(noisy, lengths)
    assert_close(a.output, b.output)
    assert_close(a.h_n, b.h_n)


def test_dropout_between_levels_only_in_training():
    model = PyramidLSTM(3, 4, num_layers=2, dropout=1.0, dtype=torch.float64)
    x = torch.randn(8, 2, 3, dtype=torch.float64)
    levels = torch_levels(model)
    # dropout 1 zeroes level 0's output in training: the top level then sees only zeros
    train_out = model.train()(x).output
    zeros = torch.zeros(4, 2, 2 * 2 * 4, dtype=torch.float64)
    assert_close(train_out, levels[1](zeros)[0])
    # in eval the dropout is off: as the same stack without dropout
    expected, _ = oracle(levels, x, [8, 8], 2)
    assert_close(model.eval()(x).output, expected)


def test_state_dict_is_per_level_torch_layout():
    model = PyramidLSTM(3, 5, num_layers=2, bidirectional=True)
    keys = list(model.state_dict())
    assert keys[0] == "layers.0.weight_ih_l0" and "layers.1.weight_hh_l0_reverse" in keys
    # level 1 sees pairs of level-0 outputs: 2 * (2 * 5) features
    assert model.state_dict()["layers.1.weight_ih_l0"].shape == (4 * 5, 2 * 2 * 5)
    torch_twin = nn.LSTM(20, 5, bidirectional=True)
    torch_twin.load_state_dict({k[len("layers.1."):]: v for k, v in model.state_dict().items()
                                if k.startswith("layers.1.")})


def test_reduced_lengths_and_total_reduction():
    model = PyramidGRU(2, 3, num_layers=3, reduction=3)
    assert model.total_reduction == 9
    assert model.reduced_lengths([9, 17, 18, 80]).tolist() == [1, 1, 2, 8]


@pytest.mark.parametrize(
    "make_call, message",
    [
        pytest.param(lambda m: m(torch.randn(3, 2, 3)), "too short", id="padded-too-short"),
        pytest.param(lambda m: m(torch.randn(8, 2, 3), [8, 3]), "too short", id="a-length-too-short"),
        pytest.param(lambda m: m(torch.randn(8, 2, 3), [8, 5, 4]), "lengths has 3 entries", id="lengths-wrong-batch"),
        pytest.param(lambda m: m(torch.randn(8, 2, 3), [8, 9]), r"lengths must lie in \[1, 8\]", id="length-too-long"),
        pytest.param(lambda m: m(torch.randn(8, 2, 3), torch.tensor([8.0, 4.0])), "lengths must be a 1-D integer",
                     id="float-lengths"),
        pytest.param(lambda m: m(torch.randn(8, 3)), "3-D tensor", id="2d-input"),
        pytest.param(lambda m: m(pack_padded_sequence(torch.randn(8, 2, 3), [8, 4]), [8, 4]), "lengths must be None",
                     id="packed-with-lengths"),
    ],
)
def test_bad_input_names_the_argument(make_call, message):
    model = PyramidLSTM(3, 4, num_layers=3)
    with pytest.raises(ValueError, match=message):
        make_call(model)


@pytest.mark.parametrize("kwargs, message", [
    pytest.param(dict(reduction=0), "reduction", id="reduction-0"),
    pytest.param(dict(num_layers=0), "num_layers", id="num_layers-0"),
    pytest.param(dict(dropout=1.5), "dropout", id="dropout-1.5"),
])
def test_bad_construction_names_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PyramidLSTM(3, 4, **kwargs)


def test_cell_variants_reach_every_level():
    """``peephole`` / ``reset_after`` configure each level's fusedrnn module (torch.nn has no twin to compare)."""
    lstm = PyramidLSTM(3, 4, num_layers=2, peephole=True)
    gru = PyramidGRU(3, 4, num_layers=2, reset_after=False)
    assert all(level.peephole for level in lstm.layers) and "layers.1.weight_ch_l0_reverse" in lstm.state_dict()
    assert all(not level.reset_after for level in gru.layers)
    x = torch.randn(6, 2, 3)
    assert lstm(x, [6, 4]).output.shape == gru(x, [6, 4]).output.shape == (3, 2, 8)
