"""The `sgvla` command line.

Each command is a thin shell over one function of the package; imports happen inside the command
so that `sgvla --help` is instant and a training node never imports the simulator. Problems the
user can fix are raised as `SgvlaError` and printed as one line with a non-zero exit code.
"""

from __future__ import annotations

import errno
import functools
import signal
import sys
import threading
from pathlib import Path

import typer

from sgvla.errors import SgvlaError

app = typer.Typer(
    name="sgvla",
    help="SG-VLA: data generation, dataset tools, training and evaluation for mobile manipulation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _stop_like_ctrl_c(signum, frame) -> None:
    raise KeyboardInterrupt


def _user_errors(fn):
    """Turn SgvlaError into `error: <message>` on stderr and exit code 2; Ctrl-C and SIGTERM into
    `interrupted; <how to continue>` and exit code 130 (after every `finally` has run: Ray shut
    down, locks released, temporary files removed)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _stop_like_ctrl_c)
        try:
            return fn(*args, **kwargs)
        except SgvlaError as e:
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError) as e:
            # A path the user gave that cannot be read or created (a missing parent, a file where a
            # folder belongs, no permission): what to fix is the path, not the program.
            where = f" {e.filename}" if e.filename else ""
            typer.secho(f"error: cannot use{where}: {e.strerror or e}; check the path you gave (its parent "
                        "folder must exist and be writable, a folder must not be a file)", fg=typer.colors.RED,
                        err=True)
            raise typer.Exit(2) from None
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            # Every sgvla writer renames complete files into place: a full disk leaves the last
            # finished state, which the same command resumes from.
            where = f" writing {e.filename}" if e.filename else ""
            typer.secho(f"error: the disk is full{where}: free space, then re-run the same command (what "
                        "was finished is kept and not redone)", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as e:
            typer.secho(f"interrupted; {str(e) or 're-run the same command to resume'}", err=True)
            raise typer.Exit(130) from None

    return wrapper


def command(*args, **kwargs):
    def deco(fn):
        return app.command(*args, **kwargs)(_user_errors(fn))

    return deco


# -- job files: every option of gen/eval from one YAML file -----------------------------------
JOB_HELP = ("YAML job file: any option of this command under its name with underscores (e.g. "
            "`ray_address: auto`); flags on the command line win over it.")
SET_HELP = "name=value over the job file (repeatable), e.g. --set episodes=30."


def _job(ctx: typer.Context) -> dict:
    return ctx.meta.setdefault("sgvla_job", {"file": {}, "sets": {}})


def _job_defaults(ctx: typer.Context) -> None:
    """Click's default_map makes the job file's values the options' defaults, so flags given on the
    command line still win and required options may come from the file."""
    values = {**_job(ctx)["file"], **_job(ctx)["sets"]}
    known = {p.name for p in ctx.command.params} - {"job", "set_"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise typer.BadParameter(f"unknown field(s) {unknown}; the fields are this command's options: "
                                 f"{', '.join(sorted(known))}")
    ctx.default_map = {**(ctx.default_map or {}), **values}


def _read_job_file(ctx: typer.Context, param, path: Path | None) -> Path | None:
    if path is None:
        return None
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise typer.BadParameter(f"cannot read {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{path} must be a mapping of option names to values")
    _job(ctx)["file"] = {k.replace("-", "_"): v for k, v in data.items()}
    _job_defaults(ctx)
    return path


def _read_sets(ctx: typer.Context, param, items: list[str]) -> list[str]:
    sets = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"{item!r} is not name=value")
        sets[name.strip().replace("-", "_")] = value
    _job(ctx)["sets"] = sets
    _job_defaults(ctx)
    return items


def job_file_option():
    return typer.Option(None, "--config", help=JOB_HELP, is_eager=True, callback=_read_job_file)


def set_option():
    return typer.Option([], "--set", help=SET_HELP, is_eager=True, callback=_read_sets)


@command("demos")
def demos(
    task: str = typer.Option("mini_kitchen", help="Task: only the built-in 'mini_kitchen' has a scripted expert."),
    subtask: str = typer.Option("all", help="pick, place, open, close, a comma list (pick,place) or all."),
    episodes: int = typer.Option(20, help="Episodes to attempt per subtask (one seed each)."),
    out: Path = typer.Option(Path("outputs/demos"), help="Output folder for <subtask>.h5/.json."),
    seed: int = typer.Option(0, help="First episode of the split; attempt i is episode seed + i."),
    split: str = typer.Option("train", help="Episode split: train (default; what you train on), val or dev."),
    noise: float = typer.Option(0.0, help="Std of Gaussian noise on the executed arm actions (labels stay "
                                          "the expert's: DART-style recovery data); 0 = none."),
    repeats: int = typer.Option(1, help="Record each episode this many times: clean, then with --noise."),
    token_grid: int = typer.Option(0, help="Snap the expert's actions to the bin centres of an action "
                                           "tokenizer with this many bins (0 = off); train with "
                                           "data.action_normalization=none so tokens reproduce them exactly."),
    images: bool = typer.Option(False, help="Also store the head/hand RGB-D frames (MS-HAB's full layout); "
                                            "`sgvla gen` renders its own, so they only cost time (about 7x)."),
) -> None:
    """Generate scripted expert demonstrations on the built-in scene (ManiSkill trajectory files)."""
    from sgvla.envs.demos import generate_demos

    generate_demos(task=task, subtask=subtask, episodes=episodes, out=out, seed=seed, split=split, noise=noise,
                   repeats=repeats, images=images, token_grid=token_grid)


@command("gen")
def gen(
    task: str = typer.Option(..., help="mini_kitchen, tidy_house, prepare_groceries or set_table."),
    subtask: str = typer.Option("all", help="pick, place, open, close, a comma list (pick,place) or all."),
    episodes: int = typer.Option(0, help="Episodes to record per subtask (0 = every episode in --demos)."),
    out: Path = typer.Option(..., help="Dataset folder to write (resumed if it exists)."),
    demos: Path | None = typer.Option(None, help="Demo .h5 file or folder (mini_kitchen default: made on the spot)."),
    split: str = typer.Option("train", help="train, val or dev (the demos' episodes must belong to it)."),
    workers: int = typer.Option(0, help="Simulator workers (0 = one per CPU core / GPU; fewer start if the "
                                        "cluster's memory does not hold them, see --worker-memory)."),
    worker_memory: float | None = typer.Option(None, help="GiB of memory Ray reserves per simulator worker "
                                                      "(default: 2 mini_kitchen, 6 MS-HAB on CPU, 16 MS-HAB on GPU)."),
    ray_address: str | None = typer.Option(None, help="Join this Ray cluster ('auto' for the local one)."),
    episodes_per_shard: int = typer.Option(8, help="Episodes per Parquet shard (one shard = one Ray task)."),
    overwrite: bool = typer.Option(False, help="Delete what --out holds and start over."),
    job: Path | None = job_file_option(),
    set_: list[str] = set_option(),
) -> None:
    """Replay demonstrations in the simulator (Ray-parallel) and record a Hugging Face dataset.

    Every option can come from a YAML job file (--config) and --set name=value."""
    from sgvla.datagen.pipeline import run_gen

    ok = run_gen(task=task, subtask=subtask, episodes=episodes, out=out, demos=demos, split=split,
                 workers=workers, ray_address=ray_address, episodes_per_shard=episodes_per_shard,
                 overwrite=overwrite, worker_memory=worker_memory)
    if not ok:
        raise typer.Exit(1)


@command("validate")
def validate(path: Path = typer.Argument(..., help="Dataset folder written by `sgvla gen`.")) -> None:
    """Check a dataset folder: schema, whole episodes, finite values, binary masks, stats."""
    from sgvla.dataset.validate import validate_dataset

    problems = validate_dataset(path)
    for p in problems:
        typer.echo(f"problem: {p}")
    if problems:
        typer.secho(f"{len(problems)} problem(s) in {path}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.echo(f"ok: {path} is a valid sgvla dataset")


@command("info")
def info(path: Path = typer.Argument(..., help="Dataset folder.")) -> None:
    """Print configs, splits, subtasks, episodes, transitions and size on disk."""
    from sgvla.dataset.info import print_info

    print_info(path)


@command("viz")
def viz(
    path: Path = typer.Argument(..., help="Dataset folder."),
    episode: int = typer.Option(0, help="episode_index to draw."),
    config: str | None = typer.Option(None, help="Config (task) holding the episode; default: the first."),
    split: str = typer.Option("train"),
    out: Path | None = typer.Option(None, help="Output PNG (a GIF is written next to it)."),
) -> None:
    """Draw an episode: contact sheet PNG + animation GIF with masks, depth and state plots."""
    from sgvla.dataset.viz import visualize_episode

    for p in visualize_episode(path, episode=episode, config=config, split=split, out=out):
        typer.echo(f"wrote {p}")


@command("export")
def export(
    dataset: Path = typer.Argument(..., help="Dataset folder written by `sgvla gen`."),
    out: Path = typer.Option(..., help="Folder to write the export to (new or empty; see --overwrite)."),
    format_: str = typer.Option("lerobot", "--format", help="Export format: lerobot."),
    version: str = typer.Option("3.0", help="LeRobot dataset version: 3.0 (current LeRobot) or 2.1 (openpi)."),
    config: str | None = typer.Option(None, help="Config (task) to export; default: every config in the folder."),
    split: str = typer.Option("train", help="Split to export."),
    overwrite: bool = typer.Option(False, help="Replace what --out holds."),
) -> None:
    """Export a split as a LeRobot dataset (images, depth, masks, state, action, stats) plus openpi's
    norm_stats.json."""
    from sgvla.dataset.export_lerobot import export_lerobot

    if format_ != "lerobot":
        raise SgvlaError(f"--format {format_!r} is not supported: use --format lerobot")
    s = export_lerobot(dataset, out, version=version, config=config, split=split, overwrite=overwrite)
    typer.echo(f"wrote {s.out}: LeRobot v{s.version}, {s.episodes} episodes, {s.frames} frames, {s.tasks} tasks "
               f"(+ norm_stats.json for openpi)")


@command("push-dataset")
def push_dataset(
    path: Path = typer.Argument(..., help="Dataset folder."),
    repo_id: str = typer.Option(..., help="Hub dataset repo, USER/NAME."),
    private: bool = typer.Option(False),
    revision: str | None = typer.Option(None, help="Branch to push to."),
    dry_run: bool = typer.Option(False, help="Only list what would be uploaded."),
) -> None:
    """Validate a dataset folder, then upload it to the Hugging Face Hub (resumable)."""
    from sgvla.dataset.push import push_dataset as _push

    _push(path, repo_id=repo_id, private=private, revision=revision, dry_run=dry_run)


@command("push-model")
def push_model(
    run: Path = typer.Argument(..., help="Training run folder (the --output of `sgvla train`)."),
    repo_id: str = typer.Option(..., help="Hub model repo, USER/NAME."),
    results: list[Path] = typer.Option([], help="An `sgvla eval` output folder of this model, for the card's "
                                                "results table (repeatable)."),
    private: bool = typer.Option(False),
    revision: str | None = typer.Option(None, help="Branch to push to."),
    dry_run: bool = typer.Option(False, help="Write the card and list what would be uploaded."),
) -> None:
    """Upload a run's final model with a model card (config, data, attached val results) to the Hub."""
    from sgvla.train.publish import push_model as _push

    _push(run, repo_id=repo_id, results=results, private=private, revision=revision, dry_run=dry_run)


@command("train")
def train(
    config: Path = typer.Option(..., help="Experiment YAML (see configs/)."),
    dataset: str = typer.Option(..., help="Dataset folder or Hub repo id."),
    output: Path = typer.Option(..., help="Run folder (checkpoints, metrics, final model)."),
    workers: int = typer.Option(1, help="Ray Train workers."),
    gpus_per_worker: float = typer.Option(0, help="GPUs per worker (0 on CPU machines)."),
    ray_address: str | None = typer.Option(None, help="Join this Ray cluster."),
    resume: bool = typer.Option(False, help="Continue from the run folder's latest checkpoint."),
    set_: list[str] = typer.Option([], "--set", help="Override a config value, e.g. stage1.epochs=3."),
) -> None:
    """Train SG-VLA with the three-stage progressive schedule on Ray Train."""
    from sgvla.train.launch import run_train

    run_train(config=config, dataset=dataset, output=output, workers=workers,
              gpus_per_worker=gpus_per_worker, ray_address=ray_address, resume=resume, overrides=set_)


@command("plot")
def plot(run: Path = typer.Argument(..., help="Run folder of `sgvla train`."),
         out: Path | None = typer.Option(None)) -> None:
    """Draw a run's loss curves to a PNG."""
    from sgvla.train.plot import plot_run

    typer.echo(f"wrote {plot_run(run, out)}")


@command("eval")
def eval_(
    model: str | None = typer.Option(None, help="Run folder, checkpoint folder, Hub id, 'expert', 'random' or "
                                      "'replay:DEMOS' (blind replay of the first demo in folder DEMOS)."),
    policy_server: str | None = typer.Option(None, help="Evaluate the model `sgvla serve` serves at this "
                                                        "ws://HOST:PORT instead of loading one."),
    task: str = typer.Option("mini_kitchen"),
    subtask: str = typer.Option("all", help="pick, place, open, close, a comma list or all."),
    episodes: int = typer.Option(30, help="Episodes per subtask."),
    out: Path = typer.Option(..., help="Folder for results.json, results.md and videos."),
    mode: str = typer.Option("auto", help="tokens, flow or auto (per subtask)."),
    seed: int = typer.Option(0, help="First episode of the split; episode i is seed + i."),
    split: str = typer.Option("val", help="Episode split: val (default, held out, what results report), "
                               "dev (held out, for tuning settings) or train."),
    workers: int = typer.Option(0, help="Ray workers (0 = one per CPU core)."),
    ray_address: str | None = typer.Option(None, help="Join this Ray cluster (default: a private local one)."),
    video: bool = typer.Option(False, help="Save MP4s of head and hand views."),
    max_steps: int | None = typer.Option(None, help="Shorter horizon than the env's (quick checks only)."),
    gpus_per_worker: float = typer.Option(0, help="GPUs per worker: the model runs there in bf16 (0 on CPU)."),
    token_decoding: str | None = typer.Option(None, help="Action tokens to actions: greedy (the paper's) or "
                                               "expected (probability-weighted bin centres); default: the "
                                               "model's config."),
    batch_envs: int = typer.Option(1, help="Envs per worker run in lockstep, their model queries batched "
                                           "into one call per step (for GPUs; same episodes)."),
    noise_seed: int = typer.Option(0, help="Flow mode: which draw of the flow noise (0 = the default, seeded by "
                                           "each episode's seed; 1, 2, ... = other draws of the same episodes)."),
    job: Path | None = job_file_option(),
    set_: list[str] = set_option(),
) -> None:
    """Roll a policy out closed-loop and report success rates per subtask.

    Every option can come from a YAML job file (--config) and --set name=value."""
    from sgvla.eval.policies import is_server
    from sgvla.eval.runner import run_eval

    if (model is None) == (policy_server is None):
        raise SgvlaError("give either --model or --policy-server (one of them)")
    if policy_server is not None and not is_server(policy_server):
        raise SgvlaError(f"--policy-server {policy_server!r} must be a ws://HOST:PORT address")
    model = model or policy_server

    run_eval(model=model, task=task, subtask=subtask, episodes=episodes, out=out, mode=mode, seed=seed,
             split=split, workers=workers, ray_address=ray_address, video=video, max_steps=max_steps,
             gpus_per_worker=gpus_per_worker, token_decoding=token_decoding, batch_envs=batch_envs,
             noise_seed=noise_seed)


@command("serve")
def serve(
    model: str = typer.Argument(..., help="Run folder, checkpoint folder or Hub id."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000),
    mode: str = typer.Option("auto", help="tokens, flow or auto (per subtask); a request may name its own."),
    device: str = typer.Option("cpu", help="cpu or cuda[:i]."),
) -> None:
    """Serve a model over openpi's websocket protocol (openpi-client, `sgvla eval --policy-server`)."""
    from sgvla.eval.server import serve as _serve

    _serve(model, host=host, port=port, mode=mode, device=device)


@command("import-minivla")
def import_minivla(
    checkpoint: Path = typer.Argument(..., help="Prismatic run folder (config.json + checkpoints/) or its .pt file, "
                                                "e.g. Stanford-ILIAD/prism-qwen25-extra-dinosiglip-224px-0_5b."),
    out: Path = typer.Argument(..., help="SG-VLA model folder to write (new or empty; see --overwrite)."),
    config: Path | None = typer.Option(None, help="Training YAML: the model gets its model section (preset, views, "
                                                  "decoders, expert); train it with --set model.init_from=OUT."),
    preset: str = typer.Option("sgvla-1.3b", help="Model preset when no --config is given."),
    dino: Path | None = typer.Option(None, help="timm vit_large_patch14_reg4_dinov2.lvd142m weights, for a "
                                                "checkpoint without vision_backbone (the base VLM)."),
    siglip: Path | None = typer.Option(None, help="timm vit_so400m_patch14_siglip_224 weights, likewise."),
    tokenizer: str | None = typer.Option(None, help="Qwen2.5 tokenizer folder or Hub id (default Qwen/Qwen2.5-0.5B; "
                                                    "'byte': the tiny preset's offline one)."),
    action_tokens: str = typer.Option("sgvla", help="Action token layout: sgvla, or minivla for a MiniVLA VLA."),
    overwrite: bool = typer.Option(False, help="Replace what OUT holds."),
) -> None:
    """Import MiniVLA's pretrained base VLM (Prismatic checkpoint) as an SG-VLA model folder."""
    from sgvla.model.import_minivla import import_minivla as _import
    from sgvla.model.import_minivla import settings_from_train_config

    overrides: dict = {}
    if config is not None:
        preset, overrides = settings_from_train_config(config)
    report = _import(checkpoint, out, overwrite=overwrite, preset=preset, overrides=overrides, dino=dino,
                     siglip=siglip, tokenizer=tokenizer, action_token_layout=action_tokens)
    typer.echo(report.summary())


@command("doctor")
def doctor(
    task: str = typer.Option("mini_kitchen", help="mini_kitchen, tidy_house, prepare_groceries or set_table."),
    subtask: str = typer.Option("all", help="pick, place, open, close, a comma list or all."),
    demos: Path | None = typer.Option(None, help="MS-HAB demo folder (default: under MS_ASSET_DIR)."),
) -> None:
    """List every missing piece (driver, packages, assets, demos) for a task at once."""
    from sgvla.doctor import print_checks, run_checks

    if not print_checks(run_checks(task, subtask, demos)):
        raise typer.Exit(1)


@command("study")
def study(
    study_file: Path = typer.Argument(..., help="Study YAML (see configs/studies/)."),
    out: Path = typer.Option(..., help="Study folder: runs, evaluations, study.json, results.md, study.png."),
    dataset: str | None = typer.Option(None, help="Dataset folder or Hub id (overrides the study file's)."),
    parallel: int = typer.Option(1, help="Run groups (one training + its evaluations) at once."),
    ray_address: str | None = typer.Option(None, help="Join this Ray cluster."),
    retry_failed: bool = typer.Option(False, help="Run cells that failed before again."),
    only: list[str] | None = typer.Option(None, help="Run only these cells: ROW@SEED, ROW (every seed) or @SEED "
                                                     "(every row); repeatable. The report still lists every cell."),
) -> None:
    """Train and evaluate a grid of configs x seeds; resumable; writes the paper-style table."""
    from sgvla.study.run import run_study

    run_study(study_file, out, dataset=dataset, parallel=parallel, ray_address=ray_address,
              retry_failed=retry_failed, only=only)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
