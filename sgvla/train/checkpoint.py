"""Training checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint is a folder `RUN/checkpoints/step-NNNNNNNN/` holding

* `model.safetensors`: the full (unsharded) model state;
* `optimizer.pt`: the full Adam state, keyed by parameter name (the same file for DDP and FSDP);
* `rng.json`: every rank's torch / CUDA / numpy / python RNG states as plain numbers (JSON, so
  resuming never unpickles anything a run folder holds);
* `trainer_state.json`: where in the schedule it was taken (stage, epoch, step in epoch, global
  step), from which the sampler position follows, plus the run's compatibility fingerprint.

The learning rate is constant (paper, section 6.1), so there is no scheduler state to keep; the
sampler position follows from (stage, epoch, step in epoch) because the data order of an epoch is
a function of the seed (`sgvla.train.sampler`).

It is assembled in a hidden temporary folder and renamed into place, so a folder with a final name
is always complete; that is what lets a restarted run trust the newest one it finds even if Ray
Train had not registered it yet when the previous run died.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sgvla.errors import SgvlaError, load_json

MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optimizer.pt"
RNG_FILE = "rng.json"
STATE_FILE = "trainer_state.json"
CHECKPOINT_DIR = "checkpoints"
_PREFIX = "step-"


@dataclass
class TrainerState:
    """Position in the schedule after the last completed optimizer step."""

    stage: int = 0           # index into the run's stage plan
    stage_name: str = ""
    epoch: int = 0           # epoch within the stage
    step_in_epoch: int = 0   # optimizer steps completed in that epoch
    stage_step: int = 0      # optimizer steps completed in the stage
    global_step: int = 0     # optimizer steps completed in the run
    samples: int = 0         # samples consumed in the run (all workers)
    done: bool = False       # the whole schedule has finished
    fingerprint: str = ""    # TrainConfig.compat_fingerprint() of the run that wrote it

    @classmethod
    def from_dict(cls, data: dict) -> TrainerState:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SgvlaError(f"trainer state has unknown field(s) {unknown}: it was not written by this version "
                             "of sgvla train; start a new run (--output elsewhere)")
        return cls(**data)


def checkpoint_name(global_step: int) -> str:
    return f"{_PREFIX}{global_step:08d}"


def _dedupe(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors refuses tensors sharing memory (tied embeddings): keep one, note the aliases."""
    seen: dict[tuple, str] = {}
    out, aliases = {}, {}
    for name, t in state.items():
        t = t.detach()
        key = (t.device.type, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        out[name] = t.to("cpu").contiguous()
    return out, aliases


def save_model_state(state: dict[str, torch.Tensor], path: Path) -> None:
    """Write a state dict to safetensors, storing shared tensors once."""
    tensors, aliases = _dedupe(state)
    save_file(tensors, str(path), metadata={"aliases": json.dumps(aliases)})


def load_model_state(path: Path) -> dict[str, torch.Tensor]:
    """Inverse of `save_model_state` (aliases come back as the same tensor)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
    state = load_file(str(path))
    for name, target in aliases.items():
        state[name] = state[target]
    return state


def rng_state() -> dict:
    """This process's RNG states as JSON-safe numbers (restored on resume)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    out = {"torch": torch.get_rng_state().tolist(),
           "numpy": {"keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
           "python": {"version": version, "state": list(internal), "gauss": py_gauss}}
    if torch.cuda.is_available():
        out["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    n = state["numpy"]
    np.random.set_state(("MT19937", np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def write_checkpoint(root: Path, state: TrainerState, model_state: dict[str, torch.Tensor],
                     optim_state: dict, rng_states: list[dict]) -> Path:
    """Assemble a checkpoint folder under `root` atomically and return its final path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(state.global_step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_model_state(model_state, tmp / MODEL_FILE)
        torch.save(optim_state, tmp / OPTIM_FILE)
        (tmp / RNG_FILE).write_text(json.dumps(rng_states))
        (tmp / STATE_FILE).write_text(json.dumps(dataclasses.asdict(state), indent=1) + "\n")
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def read_state(path: Path) -> TrainerState:
    fix = f"delete the checkpoint folder {path} to resume from the one before it"
    data = load_json(Path(path) / STATE_FILE, fix)
    if not isinstance(data, dict):
        raise SgvlaError(f"{Path(path) / STATE_FILE} holds no trainer state: {fix}")
    return TrainerState.from_dict(data)


def read_checkpoint(path: Path) -> tuple[TrainerState, dict[str, torch.Tensor], dict, list[dict]]:
    """(trainer state, model state, optimizer state, per-rank RNG states) of a checkpoint folder."""
    path = Path(path)
    try:
        model_state = load_model_state(path / MODEL_FILE)
        # weights_only: a planted pickle in a run folder must never run code on --resume
        optim_state = torch.load(path / OPTIM_FILE, map_location="cpu", weights_only=True)
        rng_states = json.loads((path / RNG_FILE).read_text())
        return read_state(path), model_state, optim_state, rng_states
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError, KeyError, TypeError,
            SafetensorError) as e:
        raise SgvlaError(f"checkpoint {path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                         "delete that folder to resume from the one before it") from e


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders under `root`, oldest first (temporary folders are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX)
             and (p / STATE_FILE).is_file() and (p / MODEL_FILE).is_file()]
    # names are zero-padded to 8 digits (`checkpoint_name`), so name order is step order
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(root: Path) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None
