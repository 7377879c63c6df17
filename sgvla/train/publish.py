"""`sgvla push-model`: publish a training run's final model to the Hub with a model card.

What is uploaded is the run's `model/` folder as `save_policy` wrote it (config, safetensors
weights, processor_config.json with the action statistics, tokenizer), plus the card (`README.md`)
and the resolved training config (`training_config.yaml`), so `sgvla.model.load_policy("USER/NAME")` and
`sgvla eval --model USER/NAME` work on the repo as they do on the folder. The card reports only
closed-loop results the user attaches with `--results` (folders written by `sgvla eval` for this
very model), each with its split and seeds: a card never claims a success rate nobody measured.
"""

from __future__ import annotations

import os
from pathlib import Path

from sgvla.dataset.atomic import write_text_atomic
from sgvla.dataset.card import ARXIV, CITATION
from sgvla.dataset.layout import fmt_bytes
from sgvla.errors import SgvlaError, load_json
from sgvla.hub import HIDDEN, check_repo_id, hub_url, names_hub_repo, push_folder, upload_plan
from sgvla.tasks import SUBTASKS
from sgvla.train.loop import FINAL_MODEL_DIR
from sgvla.train.metrics import read_metrics
from sgvla.train.preflight import CONFIG_FILE, RUN_FILE

CARD_FILE = "README.md"
CONFIG_COPY = "training_config.yaml"
RESULTS_FILE = "results.json"


def _run_model(run: Path) -> Path:
    """The final model folder of a finished run, or one error line saying what the folder is."""
    if not (run / RUN_FILE).is_file():
        raise SgvlaError(f"{run} is not a training run (no {RUN_FILE}): give the --output folder of `sgvla train`")
    model = run / FINAL_MODEL_DIR
    if not (model / "config.json").is_file():
        raise SgvlaError(f"{run} has no final model ({FINAL_MODEL_DIR}/config.json): the run has not finished; "
                         f"continue it with `sgvla train ... --resume --output {run}`")
    return model


def _check_weights(model: Path) -> None:
    from sgvla.model.configuration_sgvla import SGVLAConfig
    from sgvla.model.loading import check_checkpoint_files

    try:
        config = SGVLAConfig.from_pretrained(str(model))
    except (OSError, ValueError) as e:
        raise SgvlaError(f"cannot read {model}/config.json ({str(e).splitlines()[0]}): export the model "
                         "again") from None
    check_checkpoint_files(model, config)


def read_results(folder: Path, model: Path) -> dict:
    """An `sgvla eval` results.json that evaluated `model` (not a snapshot, not another run)."""
    f = Path(folder) / RESULTS_FILE if Path(folder).is_dir() else Path(folder)
    if not f.is_file():
        raise SgvlaError(f"--results {folder}: no {RESULTS_FILE} there; give an output folder of `sgvla eval`")
    res = load_json(f, "run `sgvla eval` again")
    if "aggregate" not in res or "model" not in res:
        raise SgvlaError(f"--results {f} is not an `sgvla eval` results file (no 'aggregate'/'model')")
    evaluated = Path(str(res["model"]))
    if (evaluated / FINAL_MODEL_DIR / "config.json").is_file():  # `sgvla eval --model RUN` loads RUN/model
        evaluated = evaluated / FINAL_MODEL_DIR
    if not evaluated.exists() or os.path.realpath(evaluated) != os.path.realpath(model):
        raise SgvlaError(f"--results {f} evaluated {res['model']}, not {model}: attach results of the model "
                         "being pushed only")
    return res


def _seed_span(seeds: list) -> str:
    seeds = sorted(int(s) for s in seeds)
    if not seeds:
        return "-"
    contiguous = seeds == list(range(seeds[0], seeds[-1] + 1))
    return f"{seeds[0]}..{seeds[-1]}" if contiguous and len(seeds) > 1 else ", ".join(map(str, seeds))


def results_table(results: list[dict]) -> str:
    """One row per attached evaluation: rate (successes/episodes) per subtask, with split and seeds."""
    if not results:
        return ("No closed-loop evaluation is attached to this card. Evaluate with `sgvla eval --model "
                "MODEL --split val` and push again with `--results EVAL_DIR`.\n")
    head = "| split | reset seeds | mode | " + " | ".join(s.capitalize() for s in SUBTASKS) + " | Avg. |"
    rows = [head, "|" + "---|" * (len(SUBTASKS) + 4)]
    for r in results:
        per = r["aggregate"].get("per_subtask", {})
        cells = []
        for s in SUBTASKS:
            a = per.get(s)
            cells.append("-" if a is None else f"{a['success_rate']:.2f} ({a['successes']}/{a['episodes']})")
        seeds = sorted({e["seed"] for e in r.get("episodes", [])}) or r.get("seeds", [])
        avg = r["aggregate"].get("average_success_rate")
        rows.append(f"| {r.get('split', '?')} | {_seed_span(seeds)} | {r.get('mode', '?')} | " + " | ".join(cells)
                    + f" | {'-' if avg is None else f'{avg:.2f}'} |")
    return "\n".join(rows) + "\n\nSuccess = the subtask's success condition at some step within the horizon, " \
        "closed loop in the simulator; one row per `sgvla eval` run attached with `--results`.\n"


def _dataset_name(dataset: str) -> str:
    """The run's dataset as the card may show it: a Hub id as is, a local folder by its name only."""
    return dataset if names_hub_repo(dataset) else Path(dataset).name


def render_model_card(run: Path, repo_id: str, results: list[dict]) -> str:
    import yaml

    info = load_json(run / RUN_FILE, "the run folder is damaged")
    config_text = (run / CONFIG_FILE).read_text(encoding="utf-8")
    model_cfg = (yaml.safe_load(config_text) or {}).get("model", {})
    dataset = _dataset_name(str(info.get("dataset", "")))
    meta = {"library_name": "sgvla", "license": "apache-2.0", "pipeline_tag": "robotics",
            "tags": ["robotics", "vla", "mobile-manipulation", "maniskill", "sgvla"]}
    if names_hub_repo(dataset):
        meta["datasets"] = [dataset]
    front = yaml.safe_dump(meta, sort_keys=False).strip()
    steps = (read_metrics(run) or [{}])[-1]
    decoders = ", ".join(model_cfg.get("aux_decoders") or []) or "none"
    return f"""---
{front}
---

# {repo_id.split("/")[-1]}

An SG-VLA policy (arXiv [{ARXIV}](https://arxiv.org/abs/{ARXIV})) trained with sgvla on
`{dataset}`: fused DINOv2 + SigLIP vision, a Qwen2 LLM emitting discrete action tokens for the
13-D Fetch action (`pd_joint_delta_pos`).

| | |
|---|---|
| size preset | {model_cfg.get("preset")} |
| views | {", ".join(model_cfg.get("views") or [])} |
| history frames | {model_cfg.get("history") or 0} |
| auxiliary decoders | {decoders} |
| flow-matching expert | {"yes" if model_cfg.get("use_flow_expert") else "no"} |
| trained | {steps.get("global_step", "?")} optimizer steps, {steps.get("samples", "?")} samples |

## Closed-loop results

{results_table(results)}
## Use

```python
from sgvla.model import load_policy  # importing sgvla.model also registers SG-VLA with AutoProcessor

model, processor = load_policy("{repo_id}")  # strict: a weight that does not fit is an error
action = model.predict_action(observation, "open the fridge", subtask="open", processor=processor).action
```

```bash
sgvla eval --model {repo_id} --split val --episodes 30
```

## Training configuration

The resolved `sgvla train` configuration (also in `{CONFIG_COPY}`):

```yaml
{config_text.strip()}
```

## Citation

```bibtex
{CITATION}
```
"""


def push_model(run: Path, repo_id: str, results: list[Path] = (), private: bool = False,
               revision: str | None = None, dry_run: bool = False) -> list[tuple[str, int]]:
    """Check the run's final model, write its card, then upload the model folder to `repo_id`."""
    run = Path(run)
    check_repo_id(repo_id)
    model = _run_model(run)
    _check_weights(model)
    attached = [read_results(r, model) for r in results]
    write_text_atomic(model / CARD_FILE, render_model_card(run, repo_id, attached))
    write_text_atomic(model / CONFIG_COPY, (run / CONFIG_FILE).read_text(encoding="utf-8"))
    plan = upload_plan(model, HIDDEN)
    total = sum(n for _, n in plan)
    url = hub_url(repo_id, "model", revision)
    if dry_run:
        for f, n in plan:
            print(f"{fmt_bytes(n):>10}  {f}")
        print(f"dry run: would upload {len(plan)} files ({fmt_bytes(total)}) to {url}; card: {model / CARD_FILE}")
        return plan
    push_folder(model, repo_id, "model", private=private, revision=revision)
    print(f"uploaded {len(plan)} files ({fmt_bytes(total)}) to {url}")
    return plan
