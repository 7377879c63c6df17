"""How well does a policy fit its training data, and is the VLA the bottleneck? (docs/results.md s.3)

    .venv/bin/python scripts/fit_diagnostics.py tokens MODEL DATASET [--samples 128]
        per action dimension, on random dataset rows: teacher-forced cross-entropy and bin accuracy
        (the right previous tokens given), and greedy accuracy (the model's own previous tokens, as
        at evaluation). Teacher >> greedy means errors compound along the 13 tokens of one step.
    .venv/bin/python scripts/fit_diagnostics.py cnn DATASET [--steps 1500] [--size 56] [--bins 64]
        a plain CNN on the same four views (+ the instruction as an id) trained to the same binned
        actions, independent heads: how fast a model with no VLA structure fits the same data.

Both only read the dataset (no simulator); the numbers are training-set fit, not success.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sgvla.batching import collate
from sgvla.dataset.torch_dataset import SgvlaTorchDataset
from sgvla.transforms import raw_to_unit

VIEWS = ["head_rgb", "hand_rgb", "head_depth", "hand_depth"]


def tokens(args) -> None:
    from sgvla.model import load_policy

    model, processor = load_policy(args.model)
    model.eval()
    c, tok = model.config, model.action_tokenizer
    ds = SgvlaTorchDataset(args.dataset, views=c.views, chunk_size=c.chunk_size,
                           stats={"action": c.action_stats}, masks=False)
    rows = np.random.default_rng(args.seed).choice(len(ds), args.samples, replace=False)
    ce, teacher, greedy = (np.zeros(c.action_dim) for _ in range(3))
    for i in rows:
        sample = ds[int(i)]
        batch = processor.collate([sample])
        with torch.no_grad():
            embeds, attn, labels = model._assemble(batch["input_ids"], batch["attention_mask"],
                                                   model.encode_images(batch["pixel_values"]), batch["labels"])
            hidden = model.llm.model(inputs_embeds=embeds, attention_mask=attn).last_hidden_state
            target = labels[0, 1:]
            keep = target != -100
            logits = F.linear(hidden[0, :-1][keep], model.llm.lm_head.weight[tok.begin:tok.end]).float()
            logits, truth = logits[:c.action_dim], target[keep][:c.action_dim] - tok.begin
            prompt = torch.tensor([processor.prompt_ids(sample["instruction"])])
            decoded = model.decode_action_tokens(batch["pixel_values"], prompt)[0, :c.action_dim] - tok.begin
        ce += F.cross_entropy(logits, truth, reduction="none").numpy()
        teacher += (logits.argmax(-1) == truth).numpy()
        greedy += (decoded == truth).numpy()
    np.set_printoptions(precision=2, suppress=True, linewidth=160)
    n = len(rows)
    print(f"{n} rows of {args.dataset}, {c.n_action_bins} bins (uniform guess: CE {np.log(c.n_action_bins):.2f})")
    print("teacher-forced CE  ", ce / n)
    print("teacher-forced acc ", teacher / n)
    print("greedy acc         ", greedy / n)


class ConvPolicy(nn.Module):
    """Four views stacked as 12 channels -> conv trunk -> per-dimension bin logits."""

    def __init__(self, n_instructions: int, size: int, bins: int, action_dim: int = 13):
        super().__init__()
        self.bins, self.action_dim = bins, action_dim
        self.trunk = nn.Sequential(nn.Conv2d(12, 32, 5, 2, 2), nn.GELU(), nn.Conv2d(32, 64, 3, 2, 1), nn.GELU(),
                                   nn.Conv2d(64, 64, 3, 2, 1), nn.GELU(), nn.Conv2d(64, 64, 3, 1, 1), nn.GELU())
        self.instruction = nn.Embedding(n_instructions, 64)
        self.head = nn.Sequential(nn.Linear(64 * (size // 8) ** 2 + 64, 256), nn.GELU(),
                                  nn.Linear(256, action_dim * bins))

    def forward(self, x: torch.Tensor, instruction: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.trunk(x).flatten(1), self.instruction(instruction)], dim=1)
        return self.head(h).view(-1, self.action_dim, self.bins)


def cnn(args) -> None:
    torch.manual_seed(args.seed)
    ds = SgvlaTorchDataset(args.dataset, views=VIEWS, masks=False)
    ids = {s: i for i, s in enumerate(sorted(set(ds._instruction)))}
    net = ConvPolicy(len(ids), args.size, args.bins)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    rng, accs, t0 = np.random.default_rng(args.seed), [], time.perf_counter()
    for step in range(1, args.steps + 1):
        samples = [ds[int(i)] for i in rng.choice(len(ds), 16)]
        unit = raw_to_unit(collate([s["pixel_values"] for s in samples]), VIEWS)  # (16, V, 3, H, W)
        x = F.interpolate(unit.flatten(0, 1), size=(args.size, args.size), mode="bilinear",
                          antialias=True).reshape(len(samples), -1, args.size, args.size)
        y = ((torch.stack([torch.as_tensor(np.asarray(s["action"])) for s in samples]) + 1) / 2 * args.bins)
        y = y.long().clamp(0, args.bins - 1)  # the same uniform bins on [-1, 1] as the action tokenizer
        logits = net(x, torch.tensor([ids[s["instruction"]] for s in samples]))
        loss = F.cross_entropy(logits.reshape(-1, args.bins), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        accs.append((logits.argmax(-1) == y).float().mean().item())
        if step % 300 == 0 or step == args.steps:
            print(f"step {step}: loss {loss.item():.3f}, bin accuracy (last 100 steps) {np.mean(accs[-100:]):.3f}, "
                  f"{step / (time.perf_counter() - t0):.1f} steps/s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tokens")
    t.add_argument("model")
    t.add_argument("dataset")
    t.add_argument("--samples", type=int, default=128)
    c = sub.add_parser("cnn")
    c.add_argument("dataset")
    c.add_argument("--steps", type=int, default=1500)
    c.add_argument("--size", type=int, default=56)
    c.add_argument("--bins", type=int, default=64)
    for p in (t, c):
        p.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    (tokens if args.cmd == "tokens" else cnn)(args)


if __name__ == "__main__":
    main()
