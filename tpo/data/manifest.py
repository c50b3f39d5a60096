"""Data manifests: the typed list of datasets a stage reads (YAML under data_manifests/).

Annotation and video paths are relative to `data_root` (absolute paths are kept); a relative
`data_root` is relative to the working directory (the repository root for `make stageN`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from tpo.config.load import load_config
from tpo.data.loaders import load_annotation  # pycocotools etc. only when data is read
from tpo.data.records import FORMAT_TASKS, TASKS, AnnotationError, LoadReport, Record

log = logging.getLogger(__name__)


@dataclass
class DatasetEntry:
    """One dataset of a mixture.

    name: unique within the manifest (records carry it as `Record.dataset`).
    task: what the records are for (one of TASKS); must match the format's task.
    format: the annotation format, a key of `tpo.data.loaders.FORMATS`.
    annotation: annotation file (or folder, for mevis/nextgqa) under data_root.
    videos: folder of the videos/images under data_root.
    weight: sampling weight of the whole dataset in the mixture (its records share it).
    split: the split name some formats need (qvh test has no labels; nextgqa file names).
    max_records: keep only the first N records (None: all).
    """

    name: str
    task: str
    format: str
    annotation: str
    videos: str
    weight: float = 1.0
    split: str = "train"
    max_records: int | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMAT_TASKS:
            raise ValueError(
                f"dataset '{self.name}': format must be one of {sorted(FORMAT_TASKS)}, "
                f"got {self.format!r}"
            )
        if self.task not in TASKS:
            raise ValueError(
                f"dataset '{self.name}': task must be one of {TASKS}, got {self.task!r}"
            )
        if self.task != FORMAT_TASKS[self.format]:
            raise ValueError(
                f"dataset '{self.name}': format {self.format!r} holds {FORMAT_TASKS[self.format]!r} "
                f"records, but task is {self.task!r}"
            )
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise ValueError(
                f"dataset '{self.name}': weight must be a finite number > 0, got {self.weight}"
            )
        if self.max_records is not None and self.max_records <= 0:
            raise ValueError(f"dataset '{self.name}': max_records must be > 0 or null")


@dataclass
class Manifest:
    """A named mixture of datasets under one data root."""

    name: str
    data_root: str
    datasets: list[DatasetEntry] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ValueError(f"manifest '{self.name}': 'datasets' is empty")
        names = [d.name for d in self.datasets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"manifest '{self.name}': duplicate dataset names {dupes}")

    def path(self, relative: str, data_root: str | Path | None = None) -> Path:
        """`relative` under data_root (or the given root); unchanged when absolute."""
        p = Path(relative)
        return p if p.is_absolute() else Path(data_root or self.data_root) / p

    def weights(self) -> dict[str, float]:
        """Dataset name -> sampling weight."""
        return {d.name: d.weight for d in self.datasets}


def load_manifest(path: str | Path, overrides: list[str] = ()) -> Manifest:
    """Read and check a manifest YAML (errors name the file and key)."""

    return load_config(Manifest, [path], list(overrides))


def load_records(
    manifest: Manifest, strict: bool = False, data_root: str | Path | None = None
) -> tuple[list[Record], LoadReport]:
    """Every dataset of the manifest through its loader; `data_root` overrides the manifest's.

    Non-strict loading skips bad annotations, counts them in the report and logs one line.
    """

    report = LoadReport()
    records: list[Record] = []
    for entry in manifest.datasets:
        ann = manifest.path(entry.annotation, data_root)
        vids = manifest.path(entry.videos, data_root)
        if not vids.is_dir():  # else every sample of the dataset is skipped, one at a time
            raise AnnotationError(
                f"manifest '{manifest.name}': dataset '{entry.name}': key 'videos' names "
                f"{vids}, which is not a folder (expected the folder of its videos or images)",
                "missing_file",
            )
        got = load_annotation(
            entry.format,
            ann,
            vids,
            split=entry.split,
            strict=strict,
            report=report,
            dataset=entry.name,
        )
        if entry.max_records is not None:
            got = got[: entry.max_records]
            report.loaded[entry.name] = len(got)
        records.extend(got)
    report.log()
    log.info(
        "manifest %s: %d records from %d datasets",
        manifest.name,
        len(records),
        len(manifest.datasets),
    )
    return records, report
