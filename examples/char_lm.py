"""Character-level language model: a 2-layer fusedrnn.LSTM (or LayerNormLSTM) trained on this repository's own text.

The corpus is the repository's documentation and Python source (``*.md``,
``fusedrnn/**/*.py``, ``examples/*.py``), so the example needs no download.
The same model is trained twice from the same initial weights on the same
batches: once with fusedrnn's layer, once with its twin: ``torch.nn.LSTM`` for
``--cell lstm`` (the default), and for ``--cell lnlstm`` (``fusedrnn.LayerNormLSTM``,
haste's LayerNorm LSTM, which torch.nn lacks) the same equations written out in
plain PyTorch ops (:class:`PlainLayerNormLSTM`).  Equal functions give the same
loss curve up to floating-point noise; ``loss.png`` shows both, and the report
gives their largest gap.  The fusedrnn model then writes a sample, one character
at a time, carrying its ``(h, c)`` state.

    python examples/char_lm.py                  # full run (minutes on a CPU)
    python examples/char_lm.py --quick          # a few seconds
    python examples/char_lm.py --cell lnlstm    # the LayerNorm LSTM against its plain-PyTorch twin
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import _common
import fusedrnn


def load_corpus(root: Path) -> str:
    files = sorted({*root.glob("*.md"), *root.glob("fusedrnn/**/*.py"), *root.glob("examples/*.py")})
    return "\n".join(path.read_text(encoding="utf-8", errors="replace") for path in files)


class CharLM(nn.Module):
    def __init__(self, lstm_class, vocab: int, embed: int, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = lstm_class(embed, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens: Tensor, state=None):
        out, state = self.lstm(self.embed(tokens), state)
        return self.head(out), state


class PlainLayerNormLSTM(nn.Module):
    """haste's LayerNorm LSTM (docs/design.md section 4) as plain PyTorch ops, step by step, batch-first, one
    direction: the twin ``fusedrnn.LayerNormLSTM`` is compared with, holding a copy of its parameters under the
    same names (so Adam and the gradient clipping see the same tensors)."""

    def __init__(self, fused: nn.Module):
        super().__init__()
        self.num_layers, self.hidden_size = fused.num_layers, fused.hidden_size
        self.weights = nn.ParameterDict({name: nn.Parameter(p.detach().clone())
                                         for name, p in fused.named_parameters()})

    def forward(self, x: Tensor, state=None):
        H, G = self.hidden_size, 4 * self.hidden_size
        h_n, c_n = [], []
        for k in range(self.num_layers):
            w = {name[: -len(f"_l{k}")]: p for name, p in self.weights.items() if name.endswith(f"_l{k}")}
            h, c = (x.new_zeros(x.shape[0], H),) * 2 if state is None else (state[0][k], state[1][k])
            # the input side of every step at once: LN(W_ih x; γ_ih) + b_ih
            xs = F.layer_norm(x @ w["weight_ih"].t(), (G,), weight=w["ln_weight_ih"]) + w["bias_ih"]
            outs = []
            for t in range(x.shape[1]):
                a = xs[:, t] + F.layer_norm(h @ w["weight_hh"].t(), (G,), weight=w["ln_weight_hh"]) + w["bias_hh"]
                i, f, g, o = a.chunk(4, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(F.layer_norm(c, (H,), weight=w["ln_weight_c"], bias=w["ln_bias_c"]))
                outs.append(h)
            x = torch.stack(outs, dim=1)
            h_n.append(h)
            c_n.append(c)
        return x, (torch.stack(h_n), torch.stack(c_n))


#: --cell: (fusedrnn's class, its name, the twin's name, the twin built from the fused layer)
CELLS = {
    "lstm": (fusedrnn.LSTM, "fusedrnn.LSTM", "torch.nn.LSTM", None),
    "lnlstm": (fusedrnn.LayerNormLSTM, "fusedrnn.LayerNormLSTM", "plain PyTorch", PlainLayerNormLSTM),
}


def twin_of(lstm: nn.Module, cell: str) -> nn.Module:
    """The twin layer, with ``lstm``'s weights: torch.nn.LSTM's, or the plain-PyTorch LayerNorm LSTM's."""
    build = CELLS[cell][3]
    if build is not None:
        return build(lstm)
    twin = nn.LSTM(lstm.input_size, lstm.hidden_size, num_layers=lstm.num_layers, batch_first=True)
    twin.load_state_dict(lstm.state_dict())
    return twin


def batches(data: Tensor, batch: int, length: int, generator: torch.Generator):
    """Random windows (inputs, next-character targets), forever."""
    while True:
        start = torch.randint(0, data.numel() - length - 1, (batch,), generator=generator)
        window = torch.stack([data[s : s + length + 1] for s in start.tolist()])
        yield window[:, :-1], window[:, 1:]


@torch.no_grad()
def sample(model: CharLM, prompt: Tensor, length: int, temperature: float, generator: torch.Generator) -> list:
    """Characters drawn one at a time, the LSTM's state carried between steps."""
    model.eval()
    logits, state = model(prompt[None])
    drawn = []
    for _ in range(length):
        probs = torch.softmax(logits[0, -1].float().cpu() / temperature, dim=-1)
        token = int(torch.multinomial(probs, 1, generator=generator))
        drawn.append(token)
        logits, state = model(torch.tensor([[token]], device=prompt.device), state)
    model.train()
    return drawn


def main() -> None:
    p = _common.parser("char_lm", __doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=None, help="training steps (default 300; 24 with --quick)")
    p.add_argument("--cell", choices=sorted(CELLS), default="lstm",
                   help="lstm: fusedrnn.LSTM against torch.nn.LSTM (default); lnlstm: fusedrnn.LayerNormLSTM "
                        "against the same equations in plain PyTorch")
    args = p.parse_args()
    device = _common.setup(args)
    if args.quick:
        # 24 steps: with 8 the validation loss ended within 0.01 of uniform's, below it or not by the corpus
        # (the repository's own text, which changes with it)
        embed, hidden, batch, length, steps, eval_every, sample_len = 8, 16, 4, 16, 24, 8, 40
    else:
        embed, hidden, batch, length, steps, eval_every, sample_len = 32, 128, 32, 64, 300, 50, 400
    steps = args.steps or steps

    text = load_corpus(_common.REPO_ROOT)
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([index[c] for c in text])
    split = int(0.9 * data.numel())
    train_data, val_data = data[:split], data[split:]
    val_x, val_y = next(batches(val_data, 4 * batch, length, torch.Generator().manual_seed(7)))
    val_x, val_y = val_x.to(device), val_y.to(device)

    fused_class, fused_name, twin_name, _ = CELLS[args.cell]
    fused = CharLM(fused_class, len(chars), embed, hidden).to(device)
    twin = copy.deepcopy(fused)
    twin.lstm = twin_of(fused.lstm, args.cell).to(device)  # same starting point, the twin's layer
    runs = {fused_name: fused, twin_name: twin}

    curves, seconds = {}, {}
    with _common.progress() as bar:
        for name, model in runs.items():
            optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
            data_stream = batches(train_data, batch, length, torch.Generator().manual_seed(args.seed))
            train_curve, val_curve = [], []
            task = bar.add_task(name, total=steps, info="")
            clock = _common.Stopwatch(device)
            for step in range(1, steps + 1):
                x, y = (t.to(device) for t in next(data_stream))
                logits, _ = model(x)
                loss = F.cross_entropy(logits.reshape(-1, len(chars)), y.reshape(-1))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                train_curve.append(loss.item())
                if step % eval_every == 0 or step == steps:
                    with torch.no_grad():
                        val = F.cross_entropy(model(val_x)[0].reshape(-1, len(chars)), val_y.reshape(-1)).item()
                    val_curve.append((step, val))
                bar.update(task, advance=1, info=f"loss {loss.item():.3f}")
            seconds[name] = clock.elapsed()
            curves[name] = (train_curve, val_curve)
            bar.console.print(f"{name}: final train loss {train_curve[-1]:.4f}, validation {val_curve[-1][1]:.4f}")

    (f_train, f_val), (t_train, t_val) = curves[fused_name], curves[twin_name]
    gap = max(abs(a - b) for a, b in zip(f_train, t_train))
    # the noise scale: how much the loss itself moves from one batch to the next
    noise = float(torch.tensor(f_train[len(f_train) // 2 :]).diff().abs().median()) if steps > 2 else 0.0

    fig, (ax, diff) = _common.plt.subplots(1, 2, figsize=(12, 4))
    for name, style in ((fused_name, "-"), (twin_name, "--")):
        train_curve, val_curve = curves[name]
        ax.plot(range(1, steps + 1), train_curve, style, lw=1, label=f"{name} (train)")
        ax.plot(*zip(*val_curve), style, marker="o", label=f"{name} (validation)")
    ax.set(xlabel="step", ylabel="cross-entropy (nats/char)", title="character LM on this repository's text")
    ax.legend()
    # the gap between the two runs, against the batch-to-batch noise of the loss itself
    diff.plot(range(1, steps + 1), [a - b for a, b in zip(f_train, t_train)], lw=1,
              label=f"{fused_name} - {twin_name}")
    diff.axhspan(-noise, noise, color="tab:gray", alpha=0.25, label="step-to-step loss noise (median)")
    diff.set(xlabel="step", ylabel="train-loss difference", title="same weights, same batches")
    diff.legend()
    _common.save_figure(fig, args.out / "loss.png")

    prompt_text = "import torch\n"
    prompt = torch.tensor([index[c] for c in prompt_text if c in index], device=device)
    text_out = prompt_text + "".join(chars[t] for t in sample(fused, prompt, sample_len, 0.8,
                                                              torch.Generator().manual_seed(args.seed)))
    (args.out / "sample.txt").write_text(text_out)
    _common.console.rule("sample from the fusedrnn model")
    _common.console.print(text_out, markup=False, highlight=False)
    _common.console.rule()

    _common.report(args, f"character LM: {fused_name} vs {twin_name}", {
        "device": str(device),
        "cell": args.cell,
        "corpus characters": data.numel(),
        "vocabulary": len(chars),
        "train steps": steps,
        "hidden": hidden,
        "fusedrnn final train loss": f_train[-1],
        "twin final train loss": t_train[-1],
        "fusedrnn final validation loss": f_val[-1][1],
        "twin final validation loss": t_val[-1][1],
        "largest train-loss gap": gap,
        "step-to-step loss noise (median)": noise,
        "fusedrnn seconds": round(seconds[fused_name], 2),
        "twin seconds": round(seconds[twin_name], 2),
    })


if __name__ == "__main__":
    main()
