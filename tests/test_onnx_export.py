"""ONNX export of fusedrnn's layers with both of torch's exporters, run in onnxruntime (README.md, "Deployment").

Every module kind (LSTM with peepholes and with projections, GRU in both reset forms, RNN tanh/relu, the
cells; several layers, both directions, batch_first, no bias) sits in one "zoo" model, exported once per
exporter with and without initial states, with the sequence length T and the batch B dynamic.  onnxruntime
then runs the exported graph at sizes other than the export's, and its outputs are compared in the same test
with fusedrnn's own PyTorch outputs, with torch.nn on the same weights (fusedrnn.revert) where torch.nn has
the module, and with the float64 reference backend, all within conftest's float32 tolerance (rtol = atol =
1e-5: onnxruntime computes in float32 too, over at most 7 steps and 2 layers).  The graph itself is checked:
ONNX's own LSTM/GRU/RNN operator for each layer-direction (GRU's linear_before_reset giving the form,
peepholes as LSTM's P input), a Loop for each direction of an LSTM with a projection, nothing of fusedrnn's.

onnxruntime, onnx and onnxscript are test requirements (Makefile: TEST_REQUIREMENTS); where one is missing the
tests here are skipped, saying which.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fusedrnn

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (make test installs it)")
onnx = pytest.importorskip("onnx", reason="onnx is not installed (make test installs it)")
pytest.importorskip("onnxscript", reason="onnxscript, which torch.onnx.export(dynamo=True) needs, is not installed")

pytestmark = [pytest.mark.usefixtures("single_thread", "quiet_backend_fallback"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # the TorchScript-based exporter says so
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]

I, H, P = 3, 5, 2  # input size, hidden size, projection size
EXPORT_T, EXPORT_B = 5, 2
RUN_SIZES = [(7, 3), (2, 1)]  # (T, B) onnxruntime runs at: neither is the export's
STATE_ROWS = 4  # the most (layers x directions) of any layer below


def layers():
    """name -> (module, whether torch.nn has it)."""
    return {
        "lstm_2layer_bidir": (fusedrnn.LSTM(I, H, 2, bidirectional=True), True),
        "lstm_batch_first_nobias": (fusedrnn.LSTM(I, H, bias=False, batch_first=True), True),
        "lstm_peephole_bidir": (fusedrnn.LSTM(I, H, bidirectional=True, peephole=True), False),
        "lstm_proj_2layer_bidir": (fusedrnn.LSTM(I, H, 2, bidirectional=True, proj_size=P), True),
        "lstm_proj_peephole_bf": (fusedrnn.LSTM(I, H, batch_first=True, proj_size=P, peephole=True), False),
        "gru_2layer_bidir_bf": (fusedrnn.GRU(I, H, 2, bidirectional=True, batch_first=True), True),
        "gru_reset_before_2layer_bidir": (fusedrnn.GRU(I, H, 2, bidirectional=True, reset_after=False), False),
        "rnn_tanh_2layer": (fusedrnn.RNN(I, H, 2), True),
        "rnn_relu_bidir_nobias": (fusedrnn.RNN(I, H, nonlinearity="relu", bidirectional=True, bias=False), True),
        "lstm_cell": (fusedrnn.LSTMCell(I, H), True),
        "lstm_cell_peephole": (fusedrnn.LSTMCell(I, H, peephole=True), False),
        "gru_cell": (fusedrnn.GRUCell(I, H), True),
        "gru_cell_reset_before": (fusedrnn.GRUCell(I, H, reset_after=False), False),
        "rnn_cell_relu": (fusedrnn.RNNCell(I, H, nonlinearity="relu"), True),
    }


def run_layer(layer: nn.Module, x, state):
    """``layer``'s outputs as a list of tensors, on time-major ``x`` [T, B, I] (a cell: its first step) and
    initial states cut from ``state`` [STATE_ROWS, B, H] (None: the layer's zeros)."""
    lstm = isinstance(layer, (nn.LSTM, nn.LSTMCell))
    if isinstance(layer, nn.RNNCellBase):
        hx = None
        if state is not None:
            h = state[0, :, :layer.hidden_size]
            hx = (h, state[1, :, :layer.hidden_size] * 0.5) if lstm else h
        result = layer(x[0], hx)
        return list(result) if lstm else [result]
    hx = None
    if state is not None:
        rows = layer.num_layers * (2 if layer.bidirectional else 1)
        h = state[:rows, :, :(layer.proj_size or layer.hidden_size)]
        hx = (h, state[-rows:, :, :layer.hidden_size] * 0.5) if lstm else h
    out, h_n = layer(x.transpose(0, 1) if layer.batch_first else x, hx)
    return [out, *h_n] if lstm else [out, h_n]


class Zoo(nn.Module):
    def __init__(self, modules: dict):
        super().__init__()
        self.layers = nn.ModuleDict(modules)

    def forward(self, x, state=None):
        return tuple(t for layer in self.layers.values() for t in run_layer(layer, x, state))


def output_names(zoo: Zoo, x, state):
    """Which layer each output of ``zoo`` comes from (for the failure messages)."""
    return [f"{name}[{k}]" for name, layer in zoo.layers.items() for k in range(len(run_layer(layer, x, state)))]


@contextlib.contextmanager
def quiet_exporter():
    """The dynamo exporter prints its progress and logs about torchvision; not the test's business."""
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def export(model, args, dynamo: bool, **options) -> bytes:
    """The ONNX model bytes of ``model`` exported on ``args`` with T and B dynamic."""
    names = ["x", "state"][:len(args)]
    with quiet_exporter():
        if dynamo:
            t, b = torch.export.Dim("T", min=1), torch.export.Dim("B", min=1)
            shapes = ({0: t, 1: b}, {1: b})[:len(args)]
            program = torch.onnx.export(model, args, dynamo=True, dynamic_shapes=shapes,
                                        custom_translation_table=fusedrnn.onnx.translation_table(), **options)
            return program.model_proto.SerializeToString()
        f = io.BytesIO()
        axes = {"x": {0: "T", 1: "B"}, "state": {1: "B"}}
        torch.onnx.export(model, args, f, dynamo=False, input_names=names,
                          dynamic_axes={n: axes[n] for n in names}, **options)
        return f.getvalue()


def run_onnx(model_bytes: bytes, *args):
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)}
    assert len(feeds) == len(args), f"the graph's inputs {[i.name for i in session.get_inputs()]}"
    return [torch.from_numpy(o) for o in session.run(None, feeds)]


def expected_structure(zoo: Zoo):
    """op type -> how many nodes the graph must have: one per layer-direction (cells: one)."""
    counts = {"LSTM": 0, "GRU": 0, "RNN": 0, "Loop": 0, "GRU linear_before_reset=0": 0, "LSTM with P": 0}
    for layer in zoo.layers.values():
        if isinstance(layer, nn.RNNCellBase):
            directions, projected = 1, False
        else:
            directions = layer.num_layers * (2 if layer.bidirectional else 1)
            projected = layer.proj_size > 0
        family = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[
            (layer.cell if hasattr(layer, "cell") else layer._cell()).family]
        counts["Loop" if projected else family] += directions
        if family == "GRU" and getattr(layer, "reset_after", True) is False:
            counts["GRU linear_before_reset=0"] += directions
        if family == "LSTM" and not projected and "weight_ch" in "".join(n for n, _ in layer.named_parameters()):
            counts["LSTM with P"] += directions
    return counts


def graph_structure(model_bytes: bytes):
    graph = onnx.load_from_string(model_bytes).graph
    counts = {"LSTM": 0, "GRU": 0, "RNN": 0, "Loop": 0, "GRU linear_before_reset=0": 0, "LSTM with P": 0}
    for node in graph.node:
        assert node.domain in ("", "ai.onnx"), f"a node of domain {node.domain!r}: {node.op_type}"
        if node.op_type in counts:
            counts[node.op_type] += 1
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "GRU" and attrs.get("linear_before_reset", 0) == 0:
            counts["GRU linear_before_reset=0"] += 1
        if node.op_type == "LSTM" and len(node.input) == 8 and node.input[7]:
            counts["LSTM with P"] += 1
    return counts


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-states", "initial-states"])
@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_every_module_exports_and_runs_in_onnxruntime_like_torch_nn(dynamo, with_state, close):
    entries = layers()
    zoo = Zoo({name: module for name, (module, _) in entries.items()}).eval()
    # torch.nn on the same weights, where torch.nn has the module
    twins = Zoo({name: fusedrnn.revert(copy.deepcopy(module)) if has_twin else module
                 for name, (module, has_twin) in entries.items()}).eval()
    reference = copy.deepcopy(zoo).double()

    def args(t, b, dtype=torch.float32):
        x = torch.randn(t, b, I, dtype=dtype)
        return (x, torch.randn(STATE_ROWS, b, H, dtype=dtype)) if with_state else (x,)

    model_bytes = export(zoo, args(EXPORT_T, EXPORT_B), dynamo)
    assert graph_structure(model_bytes) == expected_structure(zoo)

    for t, b in RUN_SIZES:
        inputs = args(t, b)
        got = run_onnx(model_bytes, *inputs)
        names = output_names(zoo, *inputs) if with_state else output_names(zoo, inputs[0], None)
        with torch.no_grad():
            ours = zoo(*inputs)
            torch_nn = twins(*inputs)
            with fusedrnn.use_backend("reference"):
                exact = reference(*(a.double() for a in inputs))
        assert len(got) == len(ours) == len(names)
        owners = {name: entries[name.rsplit("[", 1)[0]][1] for name in names}
        for name, g, o, n, e in zip(names, got, ours, torch_nn, exact):
            where = f"{name} at T={t}, B={b}"
            close(g, o, msg=f"onnxruntime against fusedrnn, {where}")
            close(g, e.float(), dtype=torch.float32, msg=f"onnxruntime against the float64 reference, {where}")
            if owners[name]:
                close(g, n, msg=f"onnxruntime against torch.nn, {where}")


def test_the_wrapper_exports_with_either_exporter(close):
    """fusedrnn.onnx.export is torch.onnx.export with the translations in place: the same arguments.  Exported
    under no_grad, as deployments often are (the tests above export with gradients on)."""
    model = nn.Sequential(nn.Linear(I, I), fusedrnn.GRU(I, H, reset_after=False)).eval()
    x = torch.randn(EXPORT_T, EXPORT_B, I)
    with quiet_exporter(), torch.no_grad():
        program = fusedrnn.onnx.export(model, (x,), dynamo=True, dynamic_shapes=({0: torch.export.Dim("T")},))
        f = io.BytesIO()
        fusedrnn.onnx.export(model, (x,), f, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "T"}})
    longer = torch.randn(EXPORT_T + 4, EXPORT_B, I)
    with torch.no_grad():
        expected = model(longer)[0]
    for model_bytes in (program.model_proto.SerializeToString(), f.getvalue()):
        close(run_onnx(model_bytes, longer)[0], expected)


@pytest.mark.parametrize("opset", [13, 17, 20])
def test_torchscript_exporter_opsets(opset, close):
    """The lowering is written for opset 13 on (fusedrnn.onnx.MIN_OPSET); torch's TorchScript exporter default is
    20.  The weights are frozen (requires_grad False), as in a model exported for inference."""
    model = Zoo({"proj": fusedrnn.LSTM(I, H, proj_size=P, bidirectional=True),
                 "gru": fusedrnn.GRU(I, H, reset_after=False)}).eval().requires_grad_(False)
    x = torch.randn(EXPORT_T, EXPORT_B, I)
    model_bytes = export(model, (x,), dynamo=False, opset_version=opset)
    assert onnx.load_from_string(model_bytes).opset_import[0].version == opset
    x = torch.randn(6, 3, I)
    with torch.no_grad():
        for got, want in zip(run_onnx(model_bytes, x), model(x)):
            close(got, want)


def test_unbatched_input(close):
    model = Zoo({"lstm": fusedrnn.LSTM(I, H, proj_size=P), "rnn": fusedrnn.RNN(I, H)}).eval()

    class Unbatched(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.rnn = model.layers["lstm"], model.layers["rnn"]

        def forward(self, x):  # x [T, I]: one sequence without a batch axis
            return self.lstm(x)[0], self.rnn(x)[0]

    unbatched = Unbatched().eval()
    f = io.BytesIO()
    with quiet_exporter():
        torch.onnx.export(unbatched, (torch.randn(EXPORT_T, I),), f, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "T"}})
    x = torch.randn(9, I)
    with torch.no_grad():
        for got, want in zip(run_onnx(f.getvalue(), x), unbatched(x)):
            close(got, want)


def test_torch_nn_on_the_same_paths():
    """The torch.nn column of README's Deployment table.  Its dynamo export fixes T in the graph (the output's time
    axis is the example's, where fusedrnn's is "T"), and it has no ONNX export of an LSTM with a projection:
    the TorchScript-based exporter refuses it, the dynamo one emits an ONNX LSTM (which has no projection)
    that onnxruntime refuses to run.  An assertion failing here means torch changed: update the table."""
    x = torch.randn(EXPORT_T, EXPORT_B, I)

    def time_axis(module):
        graph = onnx.load_from_string(export(module.eval(), (x,), dynamo=True)).graph
        return graph.output[0].type.tensor_type.shape.dim[0]

    torch_axis = time_axis(nn.LSTM(I, H))
    assert torch_axis.dim_value == EXPORT_T, f"torch.nn's dynamo export now keeps T dynamic ({torch_axis})"
    assert time_axis(fusedrnn.LSTM(I, H)).dim_param == "T"

    projected = nn.LSTM(I, H, proj_size=P).eval()
    with quiet_exporter(), pytest.raises(torch.onnx.errors.SymbolicValueError, match="LSTMs with projections"):
        torch.onnx.export(projected, (x,), io.BytesIO(), dynamo=False)
    model_bytes = export(projected, (x,), dynamo=True)
    with pytest.raises(Exception, match="initial_c must have shape"):
        run_onnx(model_bytes, x)


class PackedModel(nn.Module):
    """A model that packs its padded input itself, as models over variable-length sequences do."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x, lengths):
        out, h_n = self.rnn(pack_padded_sequence(x, lengths, enforce_sorted=False))
        return pad_packed_sequence(out)[0], h_n


def test_packed_input_raises_saying_what_to_do():
    lengths = torch.tensor([EXPORT_T, 3])
    x = torch.randn(EXPORT_T, EXPORT_B, I)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    advice = r"export the model on padded input.*fusedrnn\.revert\(model\).*dynamo=False.*sequence_lens"
    # a PackedSequence given to the wrapper, for either exporter
    for dynamo in (True, False):
        with pytest.raises(RuntimeError, match=advice):
            fusedrnn.onnx.export(fusedrnn.LSTM(I, H), (packed,), dynamo=dynamo)
    # packed inside the model: the TorchScript exporter reaches fusedrnn's op with batch_sizes
    with quiet_exporter(), pytest.raises(RuntimeError, match=advice):
        torch.onnx.export(PackedModel(fusedrnn.GRU(I, H)), (x, lengths), io.BytesIO(), dynamo=False)
    # torch.export (dynamo=True) stops in fusedrnn's forward (torch.nn's fails there too, in its own code)
    with quiet_exporter(), pytest.raises(Exception, match=advice):
        torch.onnx.export(PackedModel(fusedrnn.GRU(I, H)), (x, lengths), dynamo=True,
                          custom_translation_table=fusedrnn.onnx.translation_table())


def test_packed_input_exports_through_sequence_lens_after_revert(close):
    """The way the error points to: torch.nn's TorchScript-based export maps packing to sequence_lens."""
    model = PackedModel(fusedrnn.LSTM(I, H, 2, bidirectional=True)).eval()
    fused_model = copy.deepcopy(model)
    fusedrnn.revert(model)
    x, lengths = torch.randn(EXPORT_T, EXPORT_B, I), torch.tensor([EXPORT_T, 3])
    f = io.BytesIO()
    with quiet_exporter():
        torch.onnx.export(model, (x, lengths), f, dynamo=False, input_names=["x", "lengths"],
                          dynamic_axes={"x": {0: "T", 1: "B"}, "lengths": {0: "B"}})
    lstms = [n for n in onnx.load_from_string(f.getvalue()).graph.node if n.op_type == "LSTM"]
    assert lstms and all(len(n.input) > 4 and n.input[4] for n in lstms), "no sequence_lens on torch.nn's LSTM nodes"
    x, lengths = torch.randn(7, 3, I), torch.tensor([4, 7, 2])
    with torch.no_grad():
        expected = fused_model(x, lengths)
    got = run_onnx(f.getvalue(), x, lengths)
    close(got[0], expected[0])
    close(got[1], expected[1][0])
