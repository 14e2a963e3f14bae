"""The cell arithmetic every Triton kernel of fusedrnn shares.

Three layers, smallest first:

* gate functions (:func:`sigmoid`, :func:`tanh`) that never overflow nor
  make a NaN of a finite or infinite pre-activation (they only take exp of
  -|x|), and pass a NaN on, as torch's do;
* row-block helpers that load and store ``[BLOCK_B, BLOCK_H]`` tiles of the
  row-major buffers the backend uses (projected input, workspace, states),
  with int64 row offsets so ``rows * width`` cannot wrap past 2^31;
* cell epilogues and their backward twins: given the accumulated
  ``h_{t-1} W_hh^T`` tiles of one hidden tile, add the projected input and
  the biases, apply the gates, store the workspace (the layout of
  :mod:`fusedrnn.cells`) and return the new state.  The per-step kernel, the
  persistent kernels and (pointwise part) the backward call these, so the
  kernel the interpreter tests and the GPU-only kernels compute identical
  formulas.

All arithmetic is float32; loads are cast up, stores cast to the buffer's
element type.
"""

import os

import triton
import triton.language as tl

if os.environ.get("TRITON_INTERPRET") == "1":
    def device_function(fn):
        """Under the interpreter, a plain Python function.

        Triton's interpreter re-patches ``triton.language`` on every call of a
        ``@triton.jit`` device function (a third of the kernels' run time in
        the tests); the kernel that calls these helpers has already patched
        it, so they run as they are.  Compiled kernels get real device
        functions.
        """
        return fn
else:
    device_function = triton.jit

# cell families, as tl.constexpr values the kernels branch on at compile time
LSTM: tl.constexpr = tl.constexpr(0)
GRU: tl.constexpr = tl.constexpr(1)
RNN: tl.constexpr = tl.constexpr(2)

# below this |x|, tanh uses its odd series: (1 - e) / (1 + e) cancels there
_TANH_SERIES_BOUND: tl.constexpr = tl.constexpr(0.0625)


# ----------------------------------------------------------------------------
# Gate functions
# ----------------------------------------------------------------------------


@device_function
def sigmoid(x):
    """1/(1+exp(-x)) from z = exp(-|x|) <= 1, so no exp overflows (and no NaN) at any |x|."""
    z = tl.exp(-tl.abs(x))
    s = 1.0 / (1.0 + z)
    return tl.where(x >= 0, s, z * s)


@device_function
def tanh(x):
    """tanh from exp(-2|x|) (never overflows), with the series near 0 for relative accuracy."""
    ax = tl.abs(x)
    e = tl.exp(-2.0 * ax)
    t = (1.0 - e) / (1.0 + e)
    x2 = x * x
    series = ax * (1.0 - x2 * (1.0 / 3.0 - x2 * (2.0 / 15.0 - x2 * (17.0 / 315.0))))
    t = tl.where(ax < _TANH_SERIES_BOUND, series, t)
    return tl.where(x < 0, -t, t)


@device_function
def sigmoid_grad(y):
    """d sigmoid / dx from its output y."""
    return y * (1.0 - y)


@device_function
def tanh_grad(y):
    """d tanh / dx from its output y."""
    return 1.0 - y * y


# ----------------------------------------------------------------------------
# Tiles of row-major buffers
# ----------------------------------------------------------------------------


@device_function
def load_block(PTR, rows64, cols, width, block, H, mask):
    """Rows ``rows64``, columns ``block*H + cols`` of a ``[*, width]`` buffer, as float32."""
    offs = rows64[:, None] * width + block * H + cols[None, :]
    return tl.load(PTR + offs, mask=mask, other=0.0).to(tl.float32)


@device_function
def round_to_bfloat16(x):
    """float32 -> the nearest bfloat16 value (ties to even), still as float32.

    Triton's interpreter converts float32 to bfloat16 by truncation (seen with
    Triton 3.8.0, ``fp_downcast_rounding="rtne"`` notwithstanding: half of
    all values off by one unit), which doubles the rounding error of every
    stored bfloat16; rounding first makes the cast exact on every target.
    inf and NaN pass through.
    """
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@device_function
def to_element(value, PTR):
    """``value`` (float32) converted for storing through ``PTR``, rounding to nearest."""
    if PTR.dtype.element_ty == tl.bfloat16:
        value = round_to_bfloat16(value)
    return value.to(PTR.dtype.element_ty)


@device_function
def store_block(PTR, rows64, cols, width, block, H, mask, value):
    offs = rows64[:, None] * width + block * H + cols[None, :]
    tl.store(PTR + offs, to_element(value, PTR), mask=mask)


@device_function
def load_vector(PTR, block, H, cols, col_mask):
    """``PTR[block*H + cols]`` as a float32 row ``[1, BLOCK]`` (biases, peepholes)."""
    return tl.load(PTR + block * H + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]


@device_function
def load_state(SRC, src_width, INIT, init_width, rows64, cols, width, n, n_carry):
    """The state each active row starts its step from.

    Rows below ``n_carry`` continue from the step before (``SRC``); rows in
    ``[n_carry, n)`` start their sequence here (``INIT``: h0, c0 or the
    gradient of the final state).  Other rows and columns are 0.
    """
    col_ok = (cols < width)[None, :]
    carried = tl.load(SRC + rows64[:, None] * src_width + cols[None, :],
                      mask=(rows64 < n_carry)[:, None] & col_ok, other=0.0)
    fresh = tl.load(INIT + rows64[:, None] * init_width + cols[None, :],
                    mask=((rows64 >= n_carry) & (rows64 < n))[:, None] & col_ok, other=0.0)
    return carried.to(tl.float32) + fresh.to(tl.float32)


@device_function
def gate_weights_t(W, gate, H, K, cols, ks, UPCAST: tl.constexpr):
    """``W[gate*H + cols, ks]`` transposed (``[BLOCK_K, BLOCK_H]``): one gate's block of W^T."""
    offs = (gate * H + cols)[None, :].to(tl.int64) * K + ks[:, None]
    w = tl.load(W + offs, mask=(cols < H)[None, :] & (ks < K)[:, None], other=0.0)
    if UPCAST:
        w = w.to(tl.float32)
    return w


@device_function
def gate_weights(W, gate, H, K, js, ks, UPCAST: tl.constexpr):
    """``W[gate*H + js, ks]`` (``[BLOCK_H, BLOCK_K]``): one gate's block of W, for dA @ W."""
    offs = (gate * H + js)[:, None].to(tl.int64) * K + ks[None, :]
    w = tl.load(W + offs, mask=(js < H)[:, None] & (ks < K)[None, :], other=0.0)
    if UPCAST:
        w = w.to(tl.float32)
    return w


@device_function
def mma(a, b, acc, IEEE: tl.constexpr):
    """``acc + a @ b`` with a cast to b's dtype; float32 operands in full precision (no tf32)."""
    a = a.to(b.dtype)
    if IEEE:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@device_function
def gate_products(a, W, first_gate, H, K, cols, ks, acc0, acc1, acc2, acc3,
                  NUM_GATES: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    """One K-slice of a tile's gate products: ``acc_g += a @ W[(first_gate + g)*H + cols, ks]^T`` for each
    ``g < NUM_GATES`` (the others are returned as they came)."""
    acc0 = mma(a, gate_weights_t(W, first_gate, H, K, cols, ks, UPCAST), acc0, IEEE)
    if NUM_GATES > 1:
        acc1 = mma(a, gate_weights_t(W, first_gate + 1, H, K, cols, ks, UPCAST), acc1, IEEE)
    if NUM_GATES > 2:
        acc2 = mma(a, gate_weights_t(W, first_gate + 2, H, K, cols, ks, UPCAST), acc2, IEEE)
    if NUM_GATES > 3:
        acc3 = mma(a, gate_weights_t(W, first_gate + 3, H, K, cols, ks, UPCAST), acc3, IEEE)
    return acc0, acc1, acc2, acc3


# ----------------------------------------------------------------------------
# Forward epilogues: pre-activations -> gates, workspace, new state
# ----------------------------------------------------------------------------


@device_function
def lstm_epilogue(acc_i, acc_f, acc_g, acc_o, c_prev, XP, B_HH, W_PEEP, WS, rows64, cols, mask, H,
                  HAS_BIAS: tl.constexpr, PEEPHOLE: tl.constexpr):
    """LSTM gates of one tile; stores workspace [i, f, g, o, c']; returns (o*tanh(c'), c')."""
    col_ok = cols < H
    a_i = acc_i + load_block(XP, rows64, cols, 4 * H, 0, H, mask)
    a_f = acc_f + load_block(XP, rows64, cols, 4 * H, 1, H, mask)
    a_g = acc_g + load_block(XP, rows64, cols, 4 * H, 2, H, mask)
    a_o = acc_o + load_block(XP, rows64, cols, 4 * H, 3, H, mask)
    if HAS_BIAS:
        a_i += load_vector(B_HH, 0, H, cols, col_ok)
        a_f += load_vector(B_HH, 1, H, cols, col_ok)
        a_g += load_vector(B_HH, 2, H, cols, col_ok)
        a_o += load_vector(B_HH, 3, H, cols, col_ok)
    if PEEPHOLE:
        a_i += load_vector(W_PEEP, 0, H, cols, col_ok) * c_prev
        a_f += load_vector(W_PEEP, 1, H, cols, col_ok) * c_prev
    i = sigmoid(a_i)
    f = sigmoid(a_f)
    g = tanh(a_g)
    c = f * c_prev + i * g
    if PEEPHOLE:
        a_o += load_vector(W_PEEP, 2, H, cols, col_ok) * c
    o = sigmoid(a_o)
    m = o * tanh(c)
    store_block(WS, rows64, cols, 5 * H, 0, H, mask, i)
    store_block(WS, rows64, cols, 5 * H, 1, H, mask, f)
    store_block(WS, rows64, cols, 5 * H, 2, H, mask, g)
    store_block(WS, rows64, cols, 5 * H, 3, H, mask, o)
    store_block(WS, rows64, cols, 5 * H, 4, H, mask, c)
    return m, c


@device_function
def gru_epilogue_reset_after(acc_r, acc_z, acc_n, h_prev, XP, B_HH, WS, rows64, cols, mask, H,
                             HAS_BIAS: tl.constexpr):
    """GRU (reset_after) gates; stores workspace [r, z, n, k = W_hn h + b_hn]; returns h'."""
    col_ok = cols < H
    a_r = acc_r + load_block(XP, rows64, cols, 3 * H, 0, H, mask)
    a_z = acc_z + load_block(XP, rows64, cols, 3 * H, 1, H, mask)
    k = acc_n
    if HAS_BIAS:
        a_r += load_vector(B_HH, 0, H, cols, col_ok)
        a_z += load_vector(B_HH, 1, H, cols, col_ok)
        k += load_vector(B_HH, 2, H, cols, col_ok)
    r = sigmoid(a_r)
    z = sigmoid(a_z)
    n = tanh(load_block(XP, rows64, cols, 3 * H, 2, H, mask) + r * k)
    store_block(WS, rows64, cols, 4 * H, 0, H, mask, r)
    store_block(WS, rows64, cols, 4 * H, 1, H, mask, z)
    store_block(WS, rows64, cols, 4 * H, 2, H, mask, n)
    store_block(WS, rows64, cols, 4 * H, 3, H, mask, k)
    return (1.0 - z) * n + z * h_prev


@device_function
def gru_epilogue_reset_gates(acc_r, acc_z, h_prev, XP, B_HH, WS, rows64, cols, mask, H, HAS_BIAS: tl.constexpr):
    """GRU (reset_before) first phase: r and z; stores workspace [r, z, -, k = r*h]; returns (z, k)."""
    col_ok = cols < H
    a_r = acc_r + load_block(XP, rows64, cols, 3 * H, 0, H, mask)
    a_z = acc_z + load_block(XP, rows64, cols, 3 * H, 1, H, mask)
    if HAS_BIAS:
        a_r += load_vector(B_HH, 0, H, cols, col_ok)
        a_z += load_vector(B_HH, 1, H, cols, col_ok)
    r = sigmoid(a_r)
    z = sigmoid(a_z)
    # k is the left operand of the n gate's product: its columns past H must be exactly 0, not the
    # NaN that an infinite h gives them there (inf * 0 in the padded columns of W_hh), or that NaN
    # reaches every unit (the persistent kernel multiplies this tile directly)
    k = tl.where(col_ok[None, :], r * h_prev, 0.0)
    store_block(WS, rows64, cols, 4 * H, 0, H, mask, r)
    store_block(WS, rows64, cols, 4 * H, 1, H, mask, z)
    store_block(WS, rows64, cols, 4 * H, 3, H, mask, k)
    return z, k


@device_function
def gru_epilogue_new_gate(acc_n, z, h_prev, XP, B_HH, WS, rows64, cols, mask, H, HAS_BIAS: tl.constexpr):
    """GRU (reset_before) second phase: n from ``acc_n = (r*h) W_hn^T``; stores workspace n; returns h'."""
    a_n = acc_n + load_block(XP, rows64, cols, 3 * H, 2, H, mask)
    if HAS_BIAS:
        a_n += load_vector(B_HH, 2, H, cols, cols < H)
    n = tanh(a_n)
    store_block(WS, rows64, cols, 4 * H, 2, H, mask, n)
    return (1.0 - z) * n + z * h_prev


@device_function
def rnn_epilogue(acc, XP, B_HH, rows64, cols, mask, H, HAS_BIAS: tl.constexpr, RELU: tl.constexpr):
    """Elman RNN: act(acc + xp + b_hh); no workspace."""
    a = acc + load_block(XP, rows64, cols, H, 0, H, mask)
    if HAS_BIAS:
        a += load_vector(B_HH, 0, H, cols, cols < H)
    if RELU:
        # a select, not tl.maximum: NaN stays NaN as in torch.relu (max may return the other operand)
        h = tl.where(a < 0.0, 0.0, a)
    else:
        h = tanh(a)
    return h


# ----------------------------------------------------------------------------
# Backward: pointwise gradients of one tile (the twins of the epilogues)
# ----------------------------------------------------------------------------


@device_function
def lstm_cell_backward(dm, dc, i, f, g, o, c, c_prev, p_i, p_f, p_o, PEEPHOLE: tl.constexpr):
    """Gradients of the LSTM gate pre-activations and of c_{t-1}.

    ``dm`` is the gradient of ``o*tanh(c')`` (the hidden output before any
    projection), ``dc`` that of ``c'`` from later steps.
    """
    tc = tanh(c)
    da_o = dm * tc * sigmoid_grad(o)
    dct = dc + dm * o * tanh_grad(tc)
    if PEEPHOLE:
        dct += da_o * p_o
    da_i = dct * g * sigmoid_grad(i)
    da_f = dct * c_prev * sigmoid_grad(f)
    da_g = dct * i * tanh_grad(g)
    dc_prev = dct * f
    if PEEPHOLE:
        dc_prev += da_i * p_i + da_f * p_f
    return da_i, da_f, da_g, da_o, dc_prev


@device_function
def gru_update_backward(dh, z, n, h_prev):
    """Gradients of the z and n pre-activations from ``h' = (1-z)*n + z*h``."""
    da_z = dh * (h_prev - n) * sigmoid_grad(z)
    da_n = dh * (1.0 - z) * tanh_grad(n)
    return da_z, da_n


@device_function
def rnn_cell_backward(dh, h_new, RELU: tl.constexpr):
    if RELU:
        # torch's threshold_backward: 0 where h <= 0, else dh (h = NaN included)
        d = tl.where(h_new <= 0, 0.0, dh)
    else:
        d = dh * tanh_grad(h_new)
    return d
