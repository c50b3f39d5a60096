"""The toy-world stage manifests of `data_manifests/`, pointed at a generated toy world."""

from __future__ import annotations

from pathlib import Path

MANIFESTS = Path(__file__).resolve().parents[2] / "data_manifests"


def toy_manifest(world: str | Path, stage: int, path: Path) -> Path:
    """`toyworld_stage{stage}.yaml` with its data root set to `world`, written to `path`."""
    text = (MANIFESTS / f"toyworld_stage{stage}.yaml").read_text()
    path.write_text(text.replace("data_root: data/toyworld", f"data_root: {world}"))
    return path
