"""Per-step metrics to JSONL and TensorBoard, and a PNG of the loss curves at the end."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class RunLogger:
    """Appends one JSON line per logged step; mirrors scalars to TensorBoard when asked.

    A run that starts at `start_step` (a resumed one; 0 for a fresh one) first drops what an
    earlier run logged after that step, in the JSONL and in TensorBoard.
    """

    def __init__(
        self,
        out_dir: str | Path,
        start_step: int = 0,
        tensorboard: bool = True,
        enabled: bool = True,
    ):
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.path = self.out_dir / "metrics.jsonl"
        self._tb = None
        if enabled:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if self.path.exists():
                keep = [r for r in read_metrics(self.path) if r["step"] <= start_step]
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
                tmp.replace(self.path)
            if tensorboard:
                # function-level: tensorboard only when a run logs to it
                from torch.utils.tensorboard import SummaryWriter

                # TensorBoard then hides the events an earlier run wrote from this step on
                self._tb = SummaryWriter(str(self.out_dir / "tb"), purge_step=start_step + 1)

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
    """The rows of a metrics.jsonl file; a last line cut short (a run killed while writing it)
    is left out with a warning, any other line that is not JSON is an error naming it."""
    lines = [(n, ln) for n, ln in enumerate(Path(path).read_text().splitlines(), 1) if ln.strip()]
    rows = []
    for k, (n, ln) in enumerate(lines):
        try:
            rows.append(json.loads(ln))
        except json.JSONDecodeError as err:
            if k < len(lines) - 1:
                raise ValueError(f"{path}:{n}: not a JSON metrics row ({err.msg})") from err
            log.warning("%s:%d: leaving out a metrics row cut short: %r", path, n, ln[:80])
    return rows


def plot_losses(metrics_path: str | Path, png_path: str | Path) -> Path:
    """Draw every `loss*` series of a metrics.jsonl against the step; writes atomically."""
    # function-level: matplotlib only when a picture is drawn
    import matplotlib

    matplotlib.use("Agg")
    # function-level: matplotlib only when a picture is drawn
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
