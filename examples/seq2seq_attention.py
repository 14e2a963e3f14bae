"""Sequence to sequence with additive attention: reversing digit strings.

The seed's "neural machine translation" application, on a transduction task
generated in code: the input is a random digit string (variable length), the
target the same digits reversed.  The encoder is a bidirectional
``fusedrnn.GRU`` over the packed batch; the decoder steps one token at a time
with ``fusedrnn.GRUCell``, attending to the encoder outputs with Bahdanau's
additive attention, ``score(h, e) = v . tanh(W_q h + W_k e)``.

Trained with teacher forcing, evaluated by greedy decoding: a sequence counts
as right only if every token and the end marker are right (exact match).  The
full run reaches >= 95% exact match (see examples/README.md for timings);
``--quick`` is a smoke run of a few seconds.

Writes ``<out>/loss.png`` (training loss and held-out exact match), and
``<out>/attention.png`` (the attention weights of one test example: a reversal
shows as the anti-diagonal), and ``<out>/report.json``.

    python examples/seq2seq_attention.py              # full run
    python examples/seq2seq_attention.py --quick      # a few seconds
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import _common
import fusedrnn

PAD, BOS, EOS = 0, 1, 2
DIGIT0 = 3  # token of digit d is DIGIT0 + d
VOCAB = DIGIT0 + 10


def make_batch(batch: int, min_len: int, max_len: int, generator: torch.Generator):
    """Random digit strings and their reversals: (source [B, S], lengths [B], target [B, S+1] ending in EOS)."""
    lengths = torch.randint(min_len, max_len + 1, (batch,), generator=generator)
    digits = torch.randint(0, 10, (batch, max_len), generator=generator) + DIGIT0
    steps = torch.arange(max_len)
    valid = steps[None, :] < lengths[:, None]
    source = torch.where(valid, digits, PAD)
    # reversed within each sequence's own length: position j takes digit (len - 1 - j)
    reversed_index = (lengths[:, None] - 1 - steps[None, :]).clamp(min=0)
    target = torch.full((batch, max_len + 1), PAD)
    target[:, :max_len] = torch.where(valid, digits.gather(1, reversed_index), PAD)
    target[torch.arange(batch), lengths] = EOS
    return source, lengths, target


class Encoder(nn.Module):
    def __init__(self, embed: int, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, embed, padding_idx=PAD)
        self.rnn = fusedrnn.GRU(embed, hidden, batch_first=True, bidirectional=True)
        self.bridge = nn.Linear(2 * hidden, hidden)

    def forward(self, source: Tensor, lengths: Tensor):
        """Encoder outputs [B, S, 2H] (zeros past each length) and the decoder's first state [B, H]."""
        packed = pack_padded_sequence(self.embed(source), lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, h_n = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=source.size(1))
        return out, torch.tanh(self.bridge(torch.cat([h_n[0], h_n[1]], dim=-1)))


class AdditiveAttention(nn.Module):
    """Bahdanau attention over the encoder outputs, masked past each source length."""

    def __init__(self, query: int, key: int, hidden: int):
        super().__init__()
        self.query = nn.Linear(query, hidden, bias=False)
        self.key = nn.Linear(key, hidden)
        self.v = nn.Linear(hidden, 1, bias=False)

    def forward(self, h: Tensor, keys: Tensor, projected_keys: Tensor, mask: Tensor):
        scores = self.v(torch.tanh(self.query(h)[:, None, :] + projected_keys)).squeeze(-1)
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        return torch.bmm(weights[:, None, :], keys).squeeze(1), weights


class Decoder(nn.Module):
    def __init__(self, embed: int, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, embed, padding_idx=PAD)
        self.attention = AdditiveAttention(hidden, 2 * hidden, hidden)
        self.cell = fusedrnn.GRUCell(embed + 2 * hidden, hidden)
        self.readout = nn.Linear(hidden + 2 * hidden + embed, VOCAB)

    def forward(self, enc: Tensor, h: Tensor, mask: Tensor, steps: int, teacher: Tensor = None):
        """Logits [B, steps, V] and attention weights [B, steps, S]; feeds ``teacher`` tokens when given,
        else its own greedy choices."""
        keys = self.attention.key(enc)  # the keys' projection does not change over the steps
        token = torch.full((enc.size(0),), BOS, device=enc.device)
        context = enc.new_zeros(enc.size(0), enc.size(2))
        logits, attention = [], []
        for t in range(steps):
            emb = self.embed(token)
            h = self.cell(torch.cat([emb, context], dim=-1), h)
            context, weights = self.attention(h, enc, keys, mask)
            step_logits = self.readout(torch.cat([h, context, emb], dim=-1))
            logits.append(step_logits)
            attention.append(weights)
            token = teacher[:, t] if teacher is not None else step_logits.argmax(-1)
        return torch.stack(logits, 1), torch.stack(attention, 1)


class Seq2Seq(nn.Module):
    def __init__(self, embed: int, hidden: int):
        super().__init__()
        self.encoder = Encoder(embed, hidden)
        self.decoder = Decoder(embed, hidden)

    def forward(self, source: Tensor, lengths: Tensor, target: Tensor, teacher_forcing: bool):
        enc, h = self.encoder(source, lengths)
        mask = torch.arange(source.size(1), device=source.device)[None, :] < lengths.to(source.device)[:, None]
        # the decoder's input at step t is the target token t-1 (BOS first)
        teacher = target if teacher_forcing else None
        return self.decoder(enc, h, mask, target.size(1), teacher)


def exact_match(logits: Tensor, target: Tensor):
    """(share of sequences right in every position up to and including EOS, share of tokens right)."""
    pred = logits.argmax(-1)
    scored = target != PAD
    right = (pred == target) | ~scored
    return right.all(1).float().mean().item(), ((pred == target) & scored).sum().item() / scored.sum().item()


def main() -> None:
    p = _common.parser("seq2seq_attention", __doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=None, help="training steps (default 1000; 30 with --quick)")
    args = p.parse_args()
    device = _common.setup(args)
    if args.quick:
        embed, hidden, batch, steps, min_len, max_len, test_size, eval_every = 8, 16, 16, 30, 2, 5, 64, 10
    else:
        embed, hidden, batch, steps, min_len, max_len, test_size, eval_every = 32, 128, 64, 1000, 4, 12, 1000, 100
    steps = args.steps or steps
    data_gen = torch.Generator().manual_seed(args.seed)
    test_gen = torch.Generator().manual_seed(args.seed + 1_000_003)  # a held-out stream of strings
    test = [t.to(device) for t in make_batch(test_size, min_len, max_len, test_gen)]

    model = Seq2Seq(embed, hidden).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)

    def evaluate():
        model.eval()
        with torch.no_grad():
            logits, attention = model(*test, teacher_forcing=False)
        model.train()
        return exact_match(logits, test[2]), attention, logits.argmax(-1)

    losses, curve = [], []
    clock = _common.Stopwatch(device)
    with _common.progress() as bar:
        task = bar.add_task("seq2seq", total=steps, info="")
        for step in range(1, steps + 1):
            source, lengths, target = (t.to(device) for t in make_batch(batch, min_len, max_len, data_gen))
            logits, _ = model(source, lengths, target, teacher_forcing=True)
            loss = F.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1), ignore_index=PAD)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            if step % eval_every == 0 or step == steps:
                (seq_acc, tok_acc), _, _ = evaluate()
                curve.append((step, seq_acc))
                bar.console.print(f"step {step}: loss {loss.item():.4f}, held-out exact match {seq_acc:.1%}")
            bar.update(task, advance=1, info=f"loss {loss.item():.3f}  exact {curve[-1][1] if curve else 0:.1%}")
    train_seconds = clock.elapsed()
    (seq_acc, tok_acc), attention, predicted = evaluate()

    # plots: the learning curves, and one test example's attention
    fig, ax = _common.plt.subplots(1, 2, figsize=(10, 3.6))
    ax[0].plot(losses, lw=0.8)
    ax[0].set(xlabel="step", ylabel="cross-entropy", yscale="log", title="training loss")
    ax[1].plot(*zip(*curve), marker="o")
    ax[1].set(xlabel="step", ylabel="exact match", ylim=(0, 1), title="held-out exact match (greedy)")
    _common.save_figure(fig, args.out / "loss.png")

    source, lengths, target = (t.cpu() for t in test)
    predicted = predicted.cpu()
    k = int(lengths.argmax())  # the longest test string shows the pattern best
    n = int(lengths[k])
    src = [str(int(d) - DIGIT0) for d in source[k, :n]]
    # rows: the model's own greedy output (what it attended to while writing each token)
    out = [str(int(d) - DIGIT0) if d >= DIGIT0 else ("<eos>" if d == EOS else "?") for d in predicted[k, : n + 1]]
    fig, ax = _common.plt.subplots(figsize=(5.5, 5))
    image = ax.imshow(attention[k, : n + 1, :n].cpu().numpy(), cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_xticks(range(n), src)
    ax.set_yticks(range(n + 1), out)
    right = "right" if bool((predicted[k] == target[k])[target[k] != PAD].all()) else "wrong"
    ax.set(xlabel="source", ylabel="greedy output", title=f"attention weights (one test string, {right})")
    _common.save_figure(fig, args.out / "attention.png")

    _common.report(args, "seq2seq with attention: reversing digit strings", {
        "device": str(device),
        "train steps": steps,
        "batch": batch,
        "hidden": hidden,
        "string lengths": f"{min_len}..{max_len}",
        "train seconds": round(train_seconds, 2),
        "final loss": losses[-1],
        "test strings": test_size,
        "exact match": seq_acc,
        "token accuracy": tok_acc,
    })


if __name__ == "__main__":
    main()
