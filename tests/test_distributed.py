"""A fusedrnn model trains under DistributedDataParallel exactly as in one process.

Two processes (gloo, CPU, ``torch.multiprocessing.spawn``) each train a small
model (a bidirectional 2-layer ``fusedrnn.LSTM`` over a PackedSequence of
unsorted lengths, a ``fusedrnn.GRU`` over its output, a linear head) on their
half of a batch for a few SGD steps.  DDP averages the gradients, so with
equal halves and a mean loss every step must match one process training on
the whole batch: the gradients of every step and the parameters after the
last, within float32 tolerance (the sum runs in a different order), and the
two ranks bitwise equal to each other.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn

WORLD_SIZE = 2
STEPS = 3
BATCH, T, I, H = 8, 6, 3, 5  # BATCH splits evenly over the ranks


class SmallModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = fusedrnn.LSTM(I, H, num_layers=2, bidirectional=True, batch_first=True)
        self.gru = fusedrnn.GRU(2 * H, H, batch_first=True)
        self.head = nn.Linear(H, 1)

    def forward(self, x, lengths):
        out, _ = self.lstm(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
        _, h_n = self.gru(out)
        return self.head(h_n[-1]).squeeze(-1)


def make_data():
    """The whole batch, the same in every process."""
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(BATCH, T, I, generator=g)
    lengths = torch.randint(1, T + 1, (BATCH,), generator=g)
    y = torch.randn(BATCH, generator=g)
    return x, lengths, y


def train(model: nn.Module, parameters, x, lengths, y):
    """STEPS of SGD on a mean squared error; the gradients of every step and the final parameters."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    grads = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x, lengths), y).backward()
        grads.append([p.grad.clone() for p in parameters])
        optimizer.step()
    return grads, [p.detach().clone() for p in parameters]


def worker(rank: int, store_path: str, results_path: str):
    torch.set_num_threads(1)
    # a file store: no port to find, and nothing left listening if a rank dies
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=WORLD_SIZE)
    try:
        torch.manual_seed(0)
        model = SmallModel()
        ddp = nn.parallel.DistributedDataParallel(model)
        x, lengths, y = make_data()
        part = slice(rank * BATCH // WORLD_SIZE, (rank + 1) * BATCH // WORLD_SIZE)
        result = train(ddp, list(model.parameters()), x[part], lengths[part], y[part])
        torch.save(result, f"{results_path}.{rank}")
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_match_one_process_on_the_whole_batch(tmp_path):
    results = str(tmp_path / "result")
    mp.spawn(worker, args=(str(tmp_path / "store"), results), nprocs=WORLD_SIZE, join=True)

    torch.manual_seed(0)  # the same initial weights as every rank's
    model = SmallModel()
    names = [n for n, _ in model.named_parameters()]
    initial = [p.detach().clone() for p in model.parameters()]
    single_grads, single_params = train(model, list(model.parameters()), *make_data())

    ranks = [torch.load(f"{results}.{rank}") for rank in range(WORLD_SIZE)]
    for rank, (grads, params) in enumerate(ranks):
        for step in range(STEPS):
            for name, got, want in zip(names, grads[step], single_grads[step]):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6,
                                           msg=lambda m: f"rank {rank}, step {step}, grad of {name}: {m}")
        for name, got, want in zip(names, params, single_params):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6,
                                       msg=lambda m: f"rank {rank}, {name} after {STEPS} steps: {m}")
    for a, b in zip(ranks[0][1], ranks[1][1]):
        assert torch.equal(a, b), "the ranks' parameters drifted apart"
    # the steps did train: the parameters moved
    assert all(not torch.equal(p, q) for p, q in zip(single_params, initial))
