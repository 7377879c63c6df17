"""Tiny-preset training speed with the offline byte tokenizer's merges against the same tokenizer
without them (one token per byte, what the tiny preset used before 2026-12-04).

Both models are the tiny preset of configs/tiny_overfit_grid.yaml (four views, action tokens), built
from the same seed, stepped (stage 2: forward, backward, Adam, one thread) on the same synthetic rows
in the same process; only the tokenizer, hence the prompt's length, differs. Prints prompt tokens
and samples/s of each, and the ratio merges / bytes.

    .venv/bin/python bench/tokenizer_speed.py [--steps 20] [--warmup 3]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import tempfile
from pathlib import Path

import torch

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny_overfit_grid.yaml"


def bytes_only_tokenizer():
    """The byte tokenizer without merges: 256 byte symbols and the 3 chat specials."""
    from transformers import Qwen2Tokenizer

    from sgvla.model.processing_sgvla import END_OF_TEXT, IM_END, IM_START, build_byte_tokenizer

    merged = build_byte_tokenizer()
    last = max(merged.convert_tokens_to_ids([END_OF_TEXT, IM_START, IM_END]))  # the merges come after
    tok = Qwen2Tokenizer(vocab={k: v for k, v in merged.get_vocab().items() if v <= last}, merges=[])
    tok.add_special_tokens({"additional_special_tokens": [END_OF_TEXT, IM_START, IM_END]})
    return tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import recipe_speed  # bench/: the same model-and-data setup as the recipe's benchmark

    from sgvla.dataset.synthetic import write_synthetic_dataset
    from sgvla.model import SGVLAForActionPrediction, SGVLAProcessor

    with tempfile.TemporaryDirectory() as tmp:
        data = write_synthetic_dataset(Path(tmp) / "data", episodes={"train": [32] * 4})
        cfg, model, _, ds = recipe_speed._model_and_data(CONFIG, data)
        samples = [ds[i] for i in range(len(ds))]
        batch = cfg.train.micro_batch_size
        rows = list(itertools.islice(itertools.cycle(samples), batch * (args.warmup + args.steps)))
        results = {}
        for name in ("merges", "bytes"):
            mc = copy.deepcopy(model.config)
            tok = None if name == "merges" else bytes_only_tokenizer()
            if tok is not None:
                mc.action_token_begin = None  # the tokenizer's: SGVLAProcessor.from_config sets it
            proc = SGVLAProcessor.from_config(mc, tok)
            torch.manual_seed(0)
            m = SGVLAForActionPrediction(mc)
            batches = [proc.collate(rows[i:i + batch]) for i in range(0, len(rows), batch)]
            prompt = len(proc.prompt_ids(samples[0]["instruction"]))
            results[name] = recipe_speed.step_rate(m, batches, args.warmup, cfg)
            print(f"{name}: prompt {prompt} tokens, sequence {batches[0]['input_ids'].shape[1]} text tokens, "
                  f"{results[name]:.1f} samples/s")
        print(f"\ntiny training step, merges / bytes: {results['merges'] / results['bytes']:.2f}x samples/s "
              f"(stage 2, batch {batch}, one thread, {args.steps} steps each)")


if __name__ == "__main__":
    main()
