"""Native-format annotation loaders: one per format, the same code for the toy world and real data.

| format | annotation path | video path |
|---|---|---|
| qvh | QVHighlights jsonl | `{videos}/{vid}.mp4` |
| charades | Charades-STA txt `vid start end##sentence` | `{videos}/{vid}.mp4` |
| refcoco | RefCOCO-style json list (bbox COCO xywh pixels) | `{videos}/{video}` |
| mevis | folder with meta_expressions.json + mask_dict.json | `{videos}/{vid}` folder or `.mp4` |
| conversation | VideoChat2 json list {video, QA, start?, end?} | `{videos}/{video}` |
| mvbench | MVBench json list {video, question, candidates, answer} | `{videos}/{video}` |
| nextgqa | folder with gsub_{split}.json + {split}.csv | `{videos}/{video_id}.mp4` |

`strict=True` raises `AnnotationError` at the first bad item; `strict=False` (training) skips
bad items, counts them per reason in the `LoadReport` and logs one summary line.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tpo.data.loaders_qa import load_conversation, load_mvbench, load_nextgqa
from tpo.data.loaders_task import load_charades, load_mevis, load_qvh, load_refcoco
from tpo.data.records import LoadReport, Record

Loader = Callable[..., list[Record]]

FORMATS: dict[str, Loader] = {
    "qvh": load_qvh,
    "charades": load_charades,
    "refcoco": load_refcoco,
    "mevis": load_mevis,
    "conversation": load_conversation,
    "mvbench": load_mvbench,
    "nextgqa": load_nextgqa,
}


def load_annotation(
    fmt: str,
    annotation: str | Path,
    videos: str | Path,
    *,
    split: str = "train",
    strict: bool = True,
    report: LoadReport | None = None,
    dataset: str = "",
) -> list[Record]:
    """Records of one annotation file (or folder) in format `fmt` (a key of FORMATS).

    Skips are added to `report` (a fresh one when None; pass one to collect several files).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown annotation format {fmt!r}, expected one of {sorted(FORMATS)}")
    report = report if report is not None else LoadReport()
    records = FORMATS[fmt](
        Path(annotation), Path(videos), split=split, strict=strict, report=report, dataset=dataset
    )
    report.loaded[dataset or fmt] += len(records)
    return records
