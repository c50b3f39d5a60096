"""Per-step metrics to JSONL and TensorBoard, and a PNG of the loss curves at the end."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class RunLogger:
    """Appends one JSON line per logged step; mirrors scalars to TensorBoard when asked."""

    def __init__(self, out_dir: str | Path, tensorboard: bool = True, enabled: bool = True):
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.path = self.out_dir / "metrics.jsonl"
        self._tb = None
        if enabled:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out_dir / "tb"))

    def truncate_after(self, step: int) -> None:
        """Drop lines past `step` (a resumed run rewrites what the killed run logged after it)."""
        if not (self.enabled and self.path.exists()):
            return
        keep = [ln for ln in self.path.read_text().splitlines() if json.loads(ln)["step"] <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(ln + "\n" for ln in keep))
        tmp.replace(self.path)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Record the metrics of optimizer step `step`."""
        if not self.enabled:
            return
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, int | float):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        """Flush TensorBoard and draw the loss curves."""
        if self._tb is not None:
            self._tb.close()
        if self.enabled and self.path.exists():
            plot_losses(self.path, self.out_dir / "loss_curves.png")


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl file."""
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


def plot_losses(metrics_path: str | Path, png_path: str | Path) -> Path:
    """Draw every `loss*` series of a metrics.jsonl against the step; writes atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    keys = sorted({k for r in rows for k in r if "loss" in k and isinstance(r[k], int | float)})
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for k in keys:
        pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), int | float)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k, lw=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_yscale("log" if keys and all(r.get(k, 1) > 0 for r in rows for k in keys) else "linear")
    ax.set_title(Path(metrics_path).parent.name)
    if keys:
        ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png_path = Path(png_path)
    tmp = png_path.with_name(png_path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(png_path)
    return png_path
