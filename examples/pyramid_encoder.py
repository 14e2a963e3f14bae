"""A pyramid encoder (Listen, Attend and Spell) against a plain deep BiLSTM: same task, fewer steps.

Synthetic sequence classification generated in code: each sequence is noise
with one short burst of a class-specific waveform at a random place, and a
random length; the class is which waveform.  Two encoders of the same depth
and width read the padded batch with its lengths:

* ``plain``:   ``fusedrnn.LSTM(num_layers=3, bidirectional=True)``, all T steps at every layer;
* ``pyramid``: ``PyramidLSTM(num_layers=3, reduction=2)``, T, T/2 and T/4 steps.

Each is followed by a maximum over its valid steps and a linear classifier.
The report gives each level's time steps, the wall-clock time of a training
step (forward and backward) for both, the saving, and the held-out accuracy
each reached; the time per step is the median of training steps of the two
models alternated on one batch, so a shared machine's drifting load hits both
alike.  ``timing.png`` shows the time per step and the steps per layer,
``accuracy.png`` the learning curves.

    python examples/pyramid_encoder.py            # full run (minutes on a CPU)
    python examples/pyramid_encoder.py --quick    # a few seconds
"""

from __future__ import annotations

import math
import statistics

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import _common
import fusedrnn
from fusedrnn.pyramid import PyramidLSTM

CLASSES = 4
FEATURES = 6
BURST = 16


def waveforms(generator: torch.Generator) -> Tensor:
    """One fixed burst per class, [CLASSES, BURST, FEATURES]: sinusoids of distinct frequencies per feature."""
    t = torch.arange(BURST, dtype=torch.float32)[:, None]
    freq = torch.rand(CLASSES, 1, FEATURES, generator=generator) * 0.6 + 0.2
    phase = torch.rand(CLASSES, 1, FEATURES, generator=generator) * 2 * math.pi
    return 2.0 * torch.sin(freq * t + phase)


def make_batch(batch: int, steps: int, bursts: Tensor, generator: torch.Generator):
    """(x [B, T, F], lengths [B], labels [B]): noise plus one burst inside each sequence's own length."""
    labels = torch.randint(0, CLASSES, (batch,), generator=generator)
    lengths = torch.randint(steps // 2, steps + 1, (batch,), generator=generator)
    x = torch.randn(batch, steps, FEATURES, generator=generator)
    for b in range(batch):
        start = int(torch.randint(0, int(lengths[b]) - BURST + 1, (), generator=generator))
        x[b, start : start + BURST] += bursts[labels[b]]
    return x, lengths, labels


def masked_max(out: Tensor, lengths: Tensor) -> Tensor:
    """Maximum over each sequence's valid steps of [B, T, D] (a burst is local: a mean would dilute it)."""
    mask = torch.arange(out.size(1), device=out.device)[None, :] < lengths.to(out.device)[:, None]
    return out.masked_fill(~mask[..., None], float("-inf")).amax(1)


class Classifier(nn.Module):
    def __init__(self, encoder: str, hidden: int, layers: int):
        super().__init__()
        self.kind = encoder
        if encoder == "pyramid":
            self.encoder = PyramidLSTM(FEATURES, hidden, num_layers=layers, reduction=2, batch_first=True)
        else:
            self.encoder = fusedrnn.LSTM(FEATURES, hidden, num_layers=layers, bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * hidden, CLASSES)

    def forward(self, x: Tensor, lengths: Tensor):
        """Logits, and the encoder's output steps (to show the reduction)."""
        if self.kind == "pyramid":
            out, lengths, _ = self.encoder(x, lengths)
        else:
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out, _ = self.encoder(packed)
            out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
        return self.head(masked_max(out, lengths)), out.size(1)


def time_training_step(model: Classifier, x: Tensor, lengths: Tensor, labels: Tensor, device) -> float:
    """Seconds for one forward and backward pass (the gradients are dropped after)."""
    clock = _common.Stopwatch(device)
    logits, _ = model(x, lengths)
    F.cross_entropy(logits, labels).backward()
    seconds = clock.elapsed()
    model.zero_grad(set_to_none=True)
    return seconds


def main() -> None:
    p = _common.parser("pyramid_encoder", __doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=None, help="training steps per model (default 200; 4 with --quick)")
    args = p.parse_args()
    device = _common.setup(args)
    if args.quick:
        hidden, layers, batch, steps, seq_len, test_size, eval_every, timing_rounds = 8, 3, 8, 4, 48, 32, 2, 2
    else:
        hidden, layers, batch, steps, seq_len, test_size, eval_every, timing_rounds = 48, 3, 32, 200, 256, 256, 25, 10
    steps = args.steps or steps
    bursts = waveforms(torch.Generator().manual_seed(args.seed))
    test_x, test_len, test_y = make_batch(test_size, seq_len, bursts, torch.Generator().manual_seed(args.seed + 99))
    test_x, test_y = test_x.to(device), test_y.to(device)

    results, curves, models = {}, {}, {}
    with _common.progress() as bar:
        for kind in ("plain", "pyramid"):
            torch.manual_seed(args.seed)
            model = Classifier(kind, hidden, layers).to(device)
            optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
            data_gen = torch.Generator().manual_seed(args.seed)  # both models see the same batches
            task = bar.add_task(kind, total=steps, info="")
            curve = []
            clock = _common.Stopwatch(device)
            for step in range(1, steps + 1):
                x, lengths, labels = make_batch(batch, seq_len, bursts, data_gen)
                x, labels = x.to(device), labels.to(device)
                logits, top_steps = model(x, lengths)
                loss = F.cross_entropy(logits, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if step % eval_every == 0 or step == steps:
                    model.eval()
                    with torch.no_grad():
                        accuracy = (model(test_x, test_len)[0].argmax(-1) == test_y).float().mean().item()
                    model.train()
                    curve.append((step, accuracy))
                bar.update(task, advance=1, info=f"loss {loss.item():.3f}  acc {curve[-1][1] if curve else 0:.0%}")
            results[kind] = dict(train_seconds=clock.elapsed(), accuracy=curve[-1][1], top_steps=top_steps)
            models[kind], curves[kind] = model, curve
            bar.console.print(f"{kind}: trained in {results[kind]['train_seconds']:.1f} s, "
                              f"held-out accuracy {curve[-1][1]:.1%}")

    # the timing: the two models' training steps on one batch, alternated so that both see the same
    # machine load (on a shared machine it drifts over a run), the median of each
    x, lengths, labels = make_batch(batch, seq_len, bursts, torch.Generator().manual_seed(args.seed + 7))
    x, labels = x.to(device), labels.to(device)
    times = {kind: [] for kind in models}
    for _ in range(timing_rounds + 1):  # the first round warms up
        for kind, model in models.items():
            times[kind].append(time_training_step(model, x, lengths, labels, device))
    for kind in models:
        results[kind]["seconds_per_step"] = statistics.median(times[kind][1:])

    level_steps = {"plain": [seq_len] * layers, "pyramid": [seq_len // 2**k for k in range(layers)]}
    saving = 1 - results["pyramid"]["seconds_per_step"] / results["plain"]["seconds_per_step"]

    fig, ax = _common.plt.subplots(1, 2, figsize=(10, 3.8))
    kinds = list(results)
    colors = {"plain": "tab:gray", "pyramid": "tab:green"}
    ax[0].bar(kinds, [results[k]["seconds_per_step"] * 1e3 for k in kinds], color=[colors[k] for k in kinds])
    ax[0].set(ylabel="ms per training step (fwd + bwd)", title=f"wall clock, T={seq_len}, {layers} layers")
    width = 0.38
    for i, kind in enumerate(kinds):
        ax[1].bar([k + (i - 0.5) * width for k in range(layers)], level_steps[kind], width, label=kind,
                  color=colors[kind])
    ax[1].set(xlabel="layer", ylabel="time steps", xticks=range(layers), title="time steps per layer")
    ax[1].legend()
    _common.save_figure(fig, args.out / "timing.png")
    fig, ax = _common.plt.subplots(figsize=(6, 3.8))
    for kind in kinds:
        ax.plot(*zip(*curves[kind]), marker="o", label=kind, color=colors[kind])
    ax.set(xlabel="step", ylabel="held-out accuracy", ylim=(0, 1.02), title="burst classification")
    ax.legend()
    _common.save_figure(fig, args.out / "accuracy.png")

    _common.report(args, "pyramid encoder vs plain deep BiLSTM", {
        "device": str(device),
        "sequence length": seq_len,
        "layers, hidden": f"{layers}, {hidden}",
        "train steps": steps,
        "plain steps per layer": str(level_steps["plain"]),
        "pyramid steps per layer": str(level_steps["pyramid"]),
        "plain output steps": results["plain"]["top_steps"],
        "pyramid output steps": results["pyramid"]["top_steps"],
        "plain train seconds": round(results["plain"]["train_seconds"], 2),
        "pyramid train seconds": round(results["pyramid"]["train_seconds"], 2),
        "plain ms per step": results["plain"]["seconds_per_step"] * 1e3,
        "pyramid ms per step": results["pyramid"]["seconds_per_step"] * 1e3,
        "wall-clock saving": saving,
        "plain accuracy": results["plain"]["accuracy"],
        "pyramid accuracy": results["pyramid"]["accuracy"],
    })


if __name__ == "__main__":
    main()
