"""Shared test set-up: markers, a fixed seed per test, tolerances, and the cell
equations written out by hand (the independent oracle for fusedrnn's variants).
"""

from __future__ import annotations

import types
import warnings
import zlib

import pytest
import torch

MARKERS = (
    "gpu: needs a CUDA GPU (skipped, with the reason, where torch.cuda is not available)",
    "triton: Triton kernels; run in their own pytest process under TRITON_INTERPRET=1 on CPU",
    "slow: takes more than about a minute on 2 CPU cores",
)


def pytest_configure(config):
    for line in MARKERS:
        config.addinivalue_line("markers", line)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def fixed_seed(request):
    """Every test starts from its own fixed seed (derived from its id), so failures reproduce."""
    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    return seed


@pytest.fixture
def single_thread():
    """One intra-op thread for the test (restored after).

    The tests' tensors are tiny; on a busy 2-core machine two OpenMP threads
    spin-wait for each other and a small matmul takes milliseconds (seen: a
    parity case 17x slower with 2 threads than with 1 at load average 8).
    Opt in with ``pytestmark = pytest.mark.usefixtures("single_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def strategy(request):
    """The cpu backend's strategy forced for one test (restored after), for tests that parametrize
    ``strategy`` indirectly; a direct parametrization of ``strategy`` (other backends' tests) overrides it."""
    from fusedrnn import backends

    cpu = backends.get("cpu")
    before = cpu.strategy
    cpu.strategy = request.param
    yield request.param
    cpu.strategy = before


@pytest.fixture
def quiet_backend_fallback():
    """Silence auto's one-time RuntimeWarning that it fell back to another backend
    (e.g. to ``reference`` while the fused CPU kernels are not built): tests that
    are not about backend selection should not depend on which test warned first."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="fusedrnn: using backend", category=RuntimeWarning)
        yield


# ----------------------------------------------------------------------------
# Tolerances
# ----------------------------------------------------------------------------

#: (rtol, atol) for comparing two implementations computing in the same dtype
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
}


def assert_close(actual, expected, dtype=None, msg=""):
    """torch.testing.assert_close with this project's tolerances for ``dtype`` (default: expected's)."""
    rtol, atol = TOLERANCES[dtype or expected.dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{msg}\n{m}" if msg else m)


@pytest.fixture
def close():
    return assert_close


# ----------------------------------------------------------------------------
# One step of each cell, written from the equations (docs/design.md section 4),
# independently of fusedrnn.reference.  ``p`` maps the torch.nn parameter
# stems (weight_ih, weight_hh, bias_ih, bias_hh, weight_ch, weight_hr) to
# tensors or None.
# ----------------------------------------------------------------------------


def _affine(x, w, b):
    return x @ w.t() + (0 if b is None else b)


def lstm_step(x, h, c, p):
    """LSTM (PyTorch gate order i, f, g, o), with diagonal peepholes if p['weight_ch']."""
    a = _affine(x, p["weight_ih"], p["bias_ih"]) + _affine(h, p["weight_hh"], p["bias_hh"])
    a_i, a_f, a_g, a_o = a.chunk(4, dim=-1)
    peep = p.get("weight_ch")
    if peep is not None:
        w_ci, w_cf, w_co = peep.chunk(3)
        a_i, a_f = a_i + w_ci * c, a_f + w_cf * c
    c_new = torch.sigmoid(a_f) * c + torch.sigmoid(a_i) * torch.tanh(a_g)
    if peep is not None:
        a_o = a_o + w_co * c_new  # the output gate looks at the new cell state
    h_new = torch.sigmoid(a_o) * torch.tanh(c_new)
    if p.get("weight_hr") is not None:
        h_new = h_new @ p["weight_hr"].t()
    return h_new, c_new


def gru_step(x, h, p, reset_after=True):
    """GRU, h' = (1-z)*n + z*h; reset_after=False applies r to h before W_hn (Cho et al.)."""
    x_r, x_z, x_n = _affine(x, p["weight_ih"], p["bias_ih"]).chunk(3, dim=-1)
    w_r, w_z, w_n = p["weight_hh"].chunk(3)
    b_r, b_z, b_n = p["bias_hh"].chunk(3) if p["bias_hh"] is not None else (None, None, None)
    r = torch.sigmoid(x_r + _affine(h, w_r, b_r))
    z = torch.sigmoid(x_z + _affine(h, w_z, b_z))
    if reset_after:
        n = torch.tanh(x_n + r * _affine(h, w_n, b_n))
    else:
        n = torch.tanh(x_n + _affine(r * h, w_n, b_n))
    return (1 - z) * n + z * h


def rnn_step(x, h, p, nonlinearity="tanh"):
    a = _affine(x, p["weight_ih"], p["bias_ih"]) + _affine(h, p["weight_hh"], p["bias_hh"])
    return torch.relu(a) if nonlinearity == "relu" else torch.tanh(a)


@pytest.fixture
def step_equations():
    """The hand-written steps above: ``lstm(x, h, c, p)``, ``gru(x, h, p, reset_after)``, ``rnn(x, h, p, nonlinearity)``."""
    return types.SimpleNamespace(lstm=lstm_step, gru=gru_step, rnn=rnn_step)
