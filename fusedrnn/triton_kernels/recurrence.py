"""The recurrent kernels: forward per step, forward persistent (two kinds), backward per step.

One template per purpose; the cell is chosen by ``FAMILY`` (and its variant
flags) as ``tl.constexpr``, so each (cell, dtype) pair compiles to its own
specialised kernel from one source.  The gate arithmetic lives in
:mod:`.cell_math`, shared by all of them.

Buffers are contiguous and row-major: ``XP [rows, G*H]`` (projected input,
``b_ih`` included), ``WS [rows, workspace_blocks*H]``, states ``[B, width]``.
Per-step kernels get pointers already advanced to the step's first row.

Row counts of a step (packed sequences, either direction): ``n`` rows are
active; the first ``n_before`` of them continue from the step processed just
before (the others start from h0/c0); the first ``n_after`` go on to the step
processed next (the others end here, so their state is final).

Common meta-parameters: ``UPCAST`` makes the dot operands float32 (bfloat16
under the interpreter, whose bf16 ``tl.dot`` is wrong, docs/design.md section 8); ``IEEE``
asks float32 dots for full precision instead of tf32.
"""

import triton
import triton.language as tl

from .cell_math import (
    GRU,
    LSTM,
    gate_products,
    gate_weights,
    gate_weights_t,
    gru_epilogue_new_gate,
    gru_epilogue_reset_after,
    gru_epilogue_reset_gates,
    gru_update_backward,
    load_block,
    load_state,
    load_vector,
    lstm_cell_backward,
    lstm_epilogue,
    mma,
    rnn_cell_backward,
    rnn_epilogue,
    sigmoid_grad,
    store_block,
    device_function,
)

# ----------------------------------------------------------------------------
# Forward, one launch per step (and per phase for GRU reset_before)
# ----------------------------------------------------------------------------


@triton.jit
def forward_step_kernel(
    XP, H_SRC, H_INIT, C_SRC, C_INIT, W_HH, B_HH, W_PEEP,
    OUT, H_DST, C_DST, WS, HN, CN, Z_SCR, K_SCR,
    n, n_before, n_after, H, K,
    FAMILY: tl.constexpr, PHASE: tl.constexpr, FIRST_GATE: tl.constexpr, NUM_GATES: tl.constexpr,
    RESET_AFTER: tl.constexpr, PEEPHOLE: tl.constexpr, RELU: tl.constexpr, HAS_BIAS: tl.constexpr,
    PROJ: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One step for a (batch tile, hidden tile): all gate products of the tile, then the cell.

    Grid ``(cdiv(n, BLOCK_B), cdiv(H, BLOCK_H))``.  ``K`` is the width of the
    recurrent state (H, or P with a projection).  With ``PROJ`` the kernel
    writes ``o*tanh(c')`` to ``OUT`` (float32 scratch) and the caller
    projects it.  GRU ``reset_before`` runs twice: ``PHASE`` 1 computes r, z
    and ``k = r*h`` into ``Z_SCR``/``K_SCR``; ``PHASE`` 2 the n-gate product
    ``k W_hn^T`` (it needs all of k, hence the second launch) and h'.
    """
    pid_b = tl.program_id(0)
    pid_h = tl.program_id(1)
    rows64 = (pid_b * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    cols = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (rows64 < n)[:, None] & (cols < H)[None, :]

    zero = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc0, acc1, acc2, acc3 = zero, zero, zero, zero  # gate_products fills the first NUM_GATES
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        if PHASE == 2:
            a = load_state(K_SCR, K, K_SCR, K, rows64, ks, K, n, n)
        else:
            a = load_state(H_SRC, K, H_INIT, K, rows64, ks, K, n, n_before)
        acc0, acc1, acc2, acc3 = gate_products(a, W_HH, FIRST_GATE, H, K, cols, ks, acc0, acc1, acc2, acc3,
                                               NUM_GATES, UPCAST, IEEE)

    final = mask & (rows64 >= n_after)[:, None]
    if FAMILY == LSTM:
        c_prev = load_state(C_SRC, H, C_INIT, H, rows64, cols, H, n, n_before)
        h_new, c_new = lstm_epilogue(acc0, acc1, acc2, acc3, c_prev, XP, B_HH, W_PEEP, WS, rows64, cols, mask, H,
                                     HAS_BIAS, PEEPHOLE)
        store_block(C_DST, rows64, cols, H, 0, H, mask, c_new)
        store_block(CN, rows64, cols, H, 0, H, final, c_new)
    elif FAMILY == GRU:
        h_prev = load_state(H_SRC, H, H_INIT, H, rows64, cols, H, n, n_before)
        if RESET_AFTER:
            h_new = gru_epilogue_reset_after(acc0, acc1, acc2, h_prev, XP, B_HH, WS, rows64, cols, mask, H, HAS_BIAS)
        elif PHASE == 1:
            z, k = gru_epilogue_reset_gates(acc0, acc1, h_prev, XP, B_HH, WS, rows64, cols, mask, H, HAS_BIAS)
            store_block(Z_SCR, rows64, cols, H, 0, H, mask, z)
            store_block(K_SCR, rows64, cols, H, 0, H, mask, k)
        else:
            z = load_block(Z_SCR, rows64, cols, H, 0, H, mask)
            h_new = gru_epilogue_new_gate(acc0, z, h_prev, XP, B_HH, WS, rows64, cols, mask, H, HAS_BIAS)
    else:
        h_new = rnn_epilogue(acc0, XP, B_HH, rows64, cols, mask, H, HAS_BIAS, RELU)

    if PHASE != 1:
        store_block(OUT, rows64, cols, H, 0, H, mask, h_new)
        if not PROJ:
            store_block(H_DST, rows64, cols, H, 0, H, mask, h_new)
            store_block(HN, rows64, cols, H, 0, H, final, h_new)


# ----------------------------------------------------------------------------
# Forward, persistent, small H: a program owns batch rows and all of W_hh
# ----------------------------------------------------------------------------


@triton.jit
def forward_persistent_kernel(
    XP, H0, C0, W_HH, B_HH, W_PEEP, OUT, WS, HN, CN, OFFSETS, SIZES,
    T, B, H,
    FAMILY: tl.constexpr, RESET_AFTER: tl.constexpr, PEEPHOLE: tl.constexpr, RELU: tl.constexpr,
    HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """All T steps in one launch for ``H <= BLOCK_H`` (no projection).

    Grid ``(cdiv(B, BLOCK_B),)``.  Each program loads every gate block of
    ``W_hh`` once, keeps its rows' h and c in registers (float32) and walks
    the steps in processing order (``OFFSETS[s]``: first row of the s-th
    step processed, ``SIZES[s]``: its active rows).  Programs share nothing,
    so the interpreter can run them one after another.  A row that is not
    active at a step keeps its state: before its first step that is h0 (the
    reverse direction of a packed batch), after its last it is final.
    """
    pid = tl.program_id(0)
    rows64 = (pid * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    col_ok = (cols < H)[None, :]
    in_batch = (rows64 < B)[:, None] & col_ok
    G: tl.constexpr = 4 if FAMILY == LSTM else (3 if FAMILY == GRU else 1)
    WB: tl.constexpr = 5 if FAMILY == LSTM else (4 if FAMILY == GRU else 0)

    w0 = gate_weights_t(W_HH, 0, H, H, cols, cols, UPCAST)
    if G > 1:
        w1 = gate_weights_t(W_HH, 1, H, H, cols, cols, UPCAST)
        w2 = gate_weights_t(W_HH, 2, H, H, cols, cols, UPCAST)
    if G > 3:
        w3 = gate_weights_t(W_HH, 3, H, H, cols, cols, UPCAST)
    h = load_block(H0, rows64, cols, H, 0, H, in_batch)
    if FAMILY == LSTM:
        c = load_block(C0, rows64, cols, H, 0, H, in_batch)
    zero = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)

    for s in range(T):
        first = tl.load(OFFSETS + s)
        n = tl.load(SIZES + s)
        mask = (rows64 < n)[:, None] & col_ok
        xp = XP + first * (G * H)
        ws = WS + first * (WB * H)
        if FAMILY == LSTM:
            h_new, c_new = lstm_epilogue(mma(h, w0, zero, IEEE), mma(h, w1, zero, IEEE), mma(h, w2, zero, IEEE),
                                         mma(h, w3, zero, IEEE), c, xp, B_HH, W_PEEP, ws, rows64, cols, mask, H,
                                         HAS_BIAS, PEEPHOLE)
            c = tl.where(mask, c_new, c)
        elif FAMILY == GRU:
            if RESET_AFTER:
                h_new = gru_epilogue_reset_after(mma(h, w0, zero, IEEE), mma(h, w1, zero, IEEE),
                                                 mma(h, w2, zero, IEEE), h, xp, B_HH, ws, rows64, cols, mask, H,
                                                 HAS_BIAS)
            else:
                z, k = gru_epilogue_reset_gates(mma(h, w0, zero, IEEE), mma(h, w1, zero, IEEE), h, xp, B_HH, ws,
                                                rows64, cols, mask, H, HAS_BIAS)
                h_new = gru_epilogue_new_gate(mma(k, w2, zero, IEEE), z, h, xp, B_HH, ws, rows64, cols, mask, H,
                                              HAS_BIAS)
        else:
            h_new = rnn_epilogue(mma(h, w0, zero, IEEE), xp, B_HH, rows64, cols, mask, H, HAS_BIAS, RELU)
        store_block(OUT + first * H, rows64, cols, H, 0, H, mask, h_new)
        h = tl.where(mask, h_new, h)

    store_block(HN, rows64, cols, H, 0, H, in_batch, h)
    if FAMILY == LSTM:
        store_block(CN, rows64, cols, H, 0, H, in_batch, c)


# ----------------------------------------------------------------------------
# Forward, persistent, large H: hidden tiles across co-resident programs,
# h_t exchanged through global memory, one grid barrier per phase
# ----------------------------------------------------------------------------


@device_function
def grid_barrier(COUNTER, target):
    """Wait until ``target`` arrivals were counted (all programs, this phase).

    Every program adds 1 with release semantics (its stores before are
    visible to whoever acquires the count) and spins with acquire loads.
    The counter only grows, so phase p waits for ``p * num_programs``.
    Requires all programs to be alive at once: on a GPU the sequence driver sizes
    the grid to at most one program per SM; under the interpreter, which
    runs a grid's programs one after another, it launches through
    :mod:`.concurrent_grid` (a thread per program).
    """
    tl.debug_barrier()
    tl.atomic_add(COUNTER, 1, sem="release", scope="gpu")
    count = tl.atomic_add(COUNTER, 0, sem="acquire", scope="gpu")
    while count < target:
        count = tl.atomic_add(COUNTER, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@device_function
def _exchange_products(SRC, W_HH, rows64, cols, B, H,
                       FIRST_GATE: tl.constexpr, NUM_GATES: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
                       BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """Gate products of a tile from an exchange buffer (``.cg`` loads: another SM wrote it)."""
    zero = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    acc0, acc1, acc2, acc3 = zero, zero, zero, zero  # gate_products fills the first NUM_GATES
    for k0 in range(0, H, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(SRC + rows64[:, None] * H + ks[None, :], mask=(rows64 < B)[:, None] & (ks < H)[None, :],
                    other=0.0, cache_modifier=".cg")
        acc0, acc1, acc2, acc3 = gate_products(a, W_HH, FIRST_GATE, H, H, cols, ks, acc0, acc1, acc2, acc3,
                                               NUM_GATES, UPCAST, IEEE)
    return acc0, acc1, acc2, acc3


@triton.jit
def forward_grid_sync_kernel(
    XP, W_HH, B_HH, W_PEEP, OUT, WS, H_X, C_STATE, Z_SCR, K_SCR, COUNTER, OFFSETS, SIZES,
    T, B, H,
    FAMILY: tl.constexpr, RESET_AFTER: tl.constexpr, PEEPHOLE: tl.constexpr, RELU: tl.constexpr,
    HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """All T steps in one launch; program p owns hidden columns ``[p*BLOCK_H, (p+1)*BLOCK_H)``.

    Grid ``(cdiv(H, BLOCK_H),)``, at most one program per SM.  ``H_X`` is
    ``[2, B, H]`` float32 (``H_X[0]`` = h0 on entry): step s reads
    ``H_X[s % 2]`` and writes ``H_X[(s+1) % 2]`` (every row: inactive rows
    carry their state), then the programs meet at a grid barrier.  The cell
    state never leaves its program's columns, so ``C_STATE`` ``[B, H]``
    (c0 on entry, c_n on exit) needs no exchange.  GRU ``reset_before`` has a
    second barrier per step, between k = r*h and its product with W_hn.
    The twin of :func:`forward_step_kernel` (same epilogues).  Tested under
    the interpreter through :mod:`.concurrent_grid`, which proves the
    barrier's logic (where it sits, what it counts) but not its memory
    ordering on a GPU (see :func:`.sequence.choose_forward_strategy`).
    """
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    cols = pid * BLOCK_H + tl.arange(0, BLOCK_H)
    col_ok = (cols < H)[None, :]
    G: tl.constexpr = 4 if FAMILY == LSTM else (3 if FAMILY == GRU else 1)
    WB: tl.constexpr = 5 if FAMILY == LSTM else (4 if FAMILY == GRU else 0)
    phases = 0
    for s in range(T):
        first = tl.load(OFFSETS + s)
        n = tl.load(SIZES + s)
        src = H_X + (s % 2) * B * H
        dst = H_X + ((s + 1) % 2) * B * H
        xp = XP + first * (G * H)
        ws = WS + first * (WB * H)
        for b0 in range(0, B, BLOCK_B):
            rows64 = (b0 + tl.arange(0, BLOCK_B)).to(tl.int64)
            in_batch = (rows64 < B)[:, None] & col_ok
            mask = (rows64 < n)[:, None] & col_ok
            h_prev = tl.load(src + rows64[:, None] * H + cols[None, :], mask=in_batch, other=0.0,
                             cache_modifier=".cg")
            if FAMILY == GRU and not RESET_AFTER:
                acc0, acc1, acc2, acc3 = _exchange_products(src, W_HH, rows64, cols, B, H, 0, 2, UPCAST, IEEE,
                                                            BLOCK_B, BLOCK_H, BLOCK_K)
                z, k = gru_epilogue_reset_gates(acc0, acc1, h_prev, xp, B_HH, ws, rows64, cols, mask, H, HAS_BIAS)
                store_block(Z_SCR, rows64, cols, H, 0, H, in_batch, z)
                store_block(K_SCR, rows64, cols, H, 0, H, in_batch, k)
            else:
                acc0, acc1, acc2, acc3 = _exchange_products(src, W_HH, rows64, cols, B, H, 0, G, UPCAST, IEEE,
                                                            BLOCK_B, BLOCK_H, BLOCK_K)
                if FAMILY == LSTM:
                    c_prev = load_block(C_STATE, rows64, cols, H, 0, H, in_batch)
                    h_new, c_new = lstm_epilogue(acc0, acc1, acc2, acc3, c_prev, xp, B_HH, W_PEEP, ws, rows64, cols,
                                                 mask, H, HAS_BIAS, PEEPHOLE)
                    store_block(C_STATE, rows64, cols, H, 0, H, mask, c_new)
                elif FAMILY == GRU:
                    h_new = gru_epilogue_reset_after(acc0, acc1, acc2, h_prev, xp, B_HH, ws, rows64, cols, mask, H,
                                                     HAS_BIAS)
                else:
                    h_new = rnn_epilogue(acc0, xp, B_HH, rows64, cols, mask, H, HAS_BIAS, RELU)
                store_block(OUT + first * H, rows64, cols, H, 0, H, mask, h_new)
                store_block(dst, rows64, cols, H, 0, H, in_batch, tl.where(mask, h_new, h_prev))
        phases += 1
        grid_barrier(COUNTER, phases * nprog)
        if FAMILY == GRU and not RESET_AFTER:
            for b0 in range(0, B, BLOCK_B):
                rows64 = (b0 + tl.arange(0, BLOCK_B)).to(tl.int64)
                in_batch = (rows64 < B)[:, None] & col_ok
                mask = (rows64 < n)[:, None] & col_ok
                h_prev = tl.load(src + rows64[:, None] * H + cols[None, :], mask=in_batch, other=0.0,
                                 cache_modifier=".cg")
                acc0, acc1, acc2, acc3 = _exchange_products(K_SCR, W_HH, rows64, cols, B, H, 2, 1, UPCAST, IEEE,
                                                            BLOCK_B, BLOCK_H, BLOCK_K)
                z = load_block(Z_SCR, rows64, cols, H, 0, H, in_batch)
                h_new = gru_epilogue_new_gate(acc0, z, h_prev, xp, B_HH, ws, rows64, cols, mask, H, HAS_BIAS)
                store_block(OUT + first * H, rows64, cols, H, 0, H, mask, h_new)
                store_block(dst, rows64, cols, H, 0, H, in_batch, tl.where(mask, h_new, h_prev))
            phases += 1
            grid_barrier(COUNTER, phases * nprog)


# ----------------------------------------------------------------------------
# Backward, one launch per step (two for GRU reset_before)
# ----------------------------------------------------------------------------


@triton.jit
def backward_step_kernel(
    DOUT, DH_SRC, DH_INIT, DC_SRC, DC_INIT, WS, WS_PREV, C0, OUT_T, H_PREV_SRC, H0,
    W_HH, W_PEEP, DA, DH_DST, DC_DST, DH0, DC0, DK_SCR,
    n, n_before, n_after, H, K,
    FAMILY: tl.constexpr, PHASE: tl.constexpr, RESET_AFTER: tl.constexpr, PEEPHOLE: tl.constexpr,
    RELU: tl.constexpr, HAS_DOUT: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Backward of one step for a (batch tile, tile of dh_{t-1} columns).

    Grid ``(cdiv(n, BLOCK_B), cdiv(K, BLOCK_K))``.  The loop over hidden
    tiles recomputes the pointwise gradients ``dA`` of the gate
    pre-activations (cheap next to the product) and accumulates
    ``dh_{t-1} = dA W_hh`` at once, so dA never makes a round trip through
    memory before the product; programs of the first column tile store dA
    (for the weight gradients after the loop) and dc_{t-1}.

    Incoming gradients: ``dh_t = DOUT + (DH_SRC rows < n_after, else
    DH_INIT = dL/dh_n)``; with a projection the caller passes
    ``dm = dh_t W_hr`` as both ``DH_SRC`` and ``DH_INIT`` (``HAS_DOUT`` False).
    Saved values: the step's workspace ``WS``, ``OUT_T`` (its h'), and the
    previous state from the step processed before (``WS_PREV``'s c',
    ``H_PREV_SRC``) for rows below ``n_before``, else c0/h0.  Rows at or above
    ``n_before`` started here, so their dh_{t-1} is also dL/dh0 (``DH0``).
    GRU ``reset_before``: ``PHASE`` 1 computes ``dk = da_n W_hn`` (the
    gradient of r*h) into ``DK_SCR``; ``PHASE`` 2 the rest.
    """
    pid_b = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows64 = (pid_b * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    row_ok = (rows64 < n)[:, None]
    ks = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_k = row_ok & (ks < K)[None, :]
    writer = pid_k == 0
    acc = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)

    for j0 in range(0, H, BLOCK_H):
        js = j0 + tl.arange(0, BLOCK_H)
        mask = row_ok & (js < H)[None, :]
        store_mask = mask & writer
        dh = load_state(DH_SRC, H, DH_INIT, H, rows64, js, H, n, n_after)
        if HAS_DOUT:
            dh += load_block(DOUT, rows64, js, H, 0, H, mask)
        if FAMILY == LSTM:
            dc = load_state(DC_SRC, H, DC_INIT, H, rows64, js, H, n, n_after)
            c_prev = load_state(WS_PREV + 4 * H, 5 * H, C0, H, rows64, js, H, n, n_before)
            p_i = 0.0
            p_f = 0.0
            p_o = 0.0
            if PEEPHOLE:
                p_i = load_vector(W_PEEP, 0, H, js, js < H)
                p_f = load_vector(W_PEEP, 1, H, js, js < H)
                p_o = load_vector(W_PEEP, 2, H, js, js < H)
            da_i, da_f, da_g, da_o, dc_prev = lstm_cell_backward(
                dh, dc,
                load_block(WS, rows64, js, 5 * H, 0, H, mask), load_block(WS, rows64, js, 5 * H, 1, H, mask),
                load_block(WS, rows64, js, 5 * H, 2, H, mask), load_block(WS, rows64, js, 5 * H, 3, H, mask),
                load_block(WS, rows64, js, 5 * H, 4, H, mask), c_prev, p_i, p_f, p_o, PEEPHOLE)
            store_block(DA, rows64, js, 4 * H, 0, H, store_mask, da_i)
            store_block(DA, rows64, js, 4 * H, 1, H, store_mask, da_f)
            store_block(DA, rows64, js, 4 * H, 2, H, store_mask, da_g)
            store_block(DA, rows64, js, 4 * H, 3, H, store_mask, da_o)
            store_block(DC_DST, rows64, js, H, 0, H, store_mask, dc_prev)
            store_block(DC0, rows64, js, H, 0, H, store_mask & (rows64 >= n_before)[:, None], dc_prev)
            acc = mma(da_i, gate_weights(W_HH, 0, H, K, js, ks, UPCAST), acc, IEEE)
            acc = mma(da_f, gate_weights(W_HH, 1, H, K, js, ks, UPCAST), acc, IEEE)
            acc = mma(da_g, gate_weights(W_HH, 2, H, K, js, ks, UPCAST), acc, IEEE)
            acc = mma(da_o, gate_weights(W_HH, 3, H, K, js, ks, UPCAST), acc, IEEE)
        elif FAMILY == GRU:
            z = load_block(WS, rows64, js, 4 * H, 1, H, mask)
            n_gate = load_block(WS, rows64, js, 4 * H, 2, H, mask)
            h_prev = load_state(H_PREV_SRC, H, H0, H, rows64, js, H, n, n_before)
            da_z, da_n = gru_update_backward(dh, z, n_gate, h_prev)
            if RESET_AFTER:
                r = load_block(WS, rows64, js, 4 * H, 0, H, mask)
                da_r = da_n * load_block(WS, rows64, js, 4 * H, 3, H, mask) * sigmoid_grad(r)
                store_block(DA, rows64, js, 3 * H, 0, H, store_mask, da_r)
                store_block(DA, rows64, js, 3 * H, 1, H, store_mask, da_z)
                store_block(DA, rows64, js, 3 * H, 2, H, store_mask, da_n)
                acc = mma(da_r, gate_weights(W_HH, 0, H, K, js, ks, UPCAST), acc, IEEE)
                acc = mma(da_z, gate_weights(W_HH, 1, H, K, js, ks, UPCAST), acc, IEEE)
                acc = mma(da_n * r, gate_weights(W_HH, 2, H, K, js, ks, UPCAST), acc, IEEE)
            elif PHASE == 1:
                store_block(DA, rows64, js, 3 * H, 2, H, store_mask, da_n)
                acc = mma(da_n, gate_weights(W_HH, 2, H, K, js, ks, UPCAST), acc, IEEE)
            else:
                r = load_block(WS, rows64, js, 4 * H, 0, H, mask)
                da_r = load_block(DK_SCR, rows64, js, H, 0, H, mask) * h_prev * sigmoid_grad(r)
                store_block(DA, rows64, js, 3 * H, 0, H, store_mask, da_r)
                store_block(DA, rows64, js, 3 * H, 1, H, store_mask, da_z)
                acc = mma(da_r, gate_weights(W_HH, 0, H, K, js, ks, UPCAST), acc, IEEE)
                acc = mma(da_z, gate_weights(W_HH, 1, H, K, js, ks, UPCAST), acc, IEEE)
        else:
            da = rnn_cell_backward(dh, load_block(OUT_T, rows64, js, H, 0, H, mask), RELU)
            store_block(DA, rows64, js, H, 0, H, store_mask, da)
            acc = mma(da, gate_weights(W_HH, 0, H, K, js, ks, UPCAST), acc, IEEE)

    if FAMILY == GRU and PHASE == 1:
        store_block(DK_SCR, rows64, ks, K, 0, K, mask_k, acc)
    else:
        if FAMILY == GRU:
            # the parts of dh_{t-1} that are pointwise in the hidden index (here ks indexes H)
            dh_k = load_state(DH_SRC, H, DH_INIT, H, rows64, ks, H, n, n_after)
            if HAS_DOUT:
                dh_k += load_block(DOUT, rows64, ks, H, 0, H, mask_k)
            acc += dh_k * load_block(WS, rows64, ks, 4 * H, 1, H, mask_k)
            if not RESET_AFTER:
                acc += load_block(DK_SCR, rows64, ks, H, 0, H, mask_k) * load_block(WS, rows64, ks, 4 * H, 0, H,
                                                                                    mask_k)
        store_block(DH_DST, rows64, ks, K, 0, K, mask_k, acc)
        store_block(DH0, rows64, ks, K, 0, K, mask_k & (rows64 >= n_before)[:, None], acc)
