"""`sgvla plot RUN`: the loss curves of a training run as one PNG.

One panel per kind of quantity, x = optimizer step, stage boundaries shaded, so the effect of the
schedule (stage 1's detached decoders, stage 2's joint refinement, stage 3's flow loss) is visible
at a glance.
"""

from __future__ import annotations

from pathlib import Path

from sgvla.errors import SgvlaError
from sgvla.train.metrics import METRICS_FILE, read_metrics

_STAGE_COLORS = {"stage1": "#dbe9f6", "stage2": "#e4f4dd", "stage3": "#fbe7d3"}


def _stage_spans(records: list[dict]) -> list[tuple[str, int, int]]:
    spans: list[tuple[str, int, int]] = []
    for r in records:
        name, step = r.get("stage", ""), r["global_step"]
        if spans and spans[-1][0] == name:
            spans[-1] = (name, spans[-1][1], step)
        else:
            spans.append((name, step - 1, step))
    return spans


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    xs = [r["global_step"] for r in records if isinstance(r.get(key), (int, float))]
    ys = [r[key] for r in records if isinstance(r.get(key), (int, float))]
    return xs, ys


def plot_run(run: Path, out: Path | None = None) -> Path:
    """Draw `RUN/metrics.jsonl` to `out` (default `RUN/loss_curves.png`) and return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run)
    records = read_metrics(run)
    if not records:
        raise SgvlaError(f"{run / METRICS_FILE} has no records: pass the --output folder of a "
                         "`sgvla train` run that has completed at least one step")
    loss_keys = sorted({k[len("loss_"):] for r in records for k in r if k.startswith("loss_")})
    panels = [("loss", ["loss"]), ("losses", [f"loss_{k}" for k in loss_keys]),
              ("token accuracy", ["token_accuracy"]), ("grad norm", ["grad_norm"])]
    panels = [(t, keys) for t, keys in panels if any(_series(records, k)[0] for k in keys)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.6 * len(panels)), sharex=True, squeeze=False)
    spans = _stage_spans(records)
    for ax, (title, keys) in zip(axes[:, 0], panels, strict=True):
        for name, a, b in spans:
            ax.axvspan(a, b, color=_STAGE_COLORS.get(name, "#eeeeee"), lw=0)
        for k in keys:
            xs, ys = _series(records, k)
            if xs:
                ax.plot(xs, ys, lw=1.2, label=k.removeprefix("loss_"))
        positive = all(y > 0 for k in keys for y in _series(records, k)[1])
        if title in ("loss", "losses", "grad norm") and positive:
            ax.set_yscale("log")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8, ncol=4)
    axes[0, 0].set_title(f"{run.name}: " + ", ".join(f"{n} (steps {a + 1}-{b})" for n, a, b in spans),
                         fontsize=9)
    axes[-1, 0].set_xlabel("optimizer step")
    fig.tight_layout()
    out = Path(out) if out else run / "loss_curves.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
