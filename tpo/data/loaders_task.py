"""Loaders of the task-annotation formats: QVHighlights, Charades-STA, RefCOCO-style, MeViS.

Each turns native annotations into question/answer `Record`s whose answer holds the task pair.
"""

from __future__ import annotations

from pathlib import Path

from pycocotools import mask as mask_utils

from tpo.data.loader_utils import (
    check_box_xywh,
    check_window,
    need,
    need_number,
    need_str,
    number,
    numbered_lines,
    parse_json_line,
    read_json,
    resolve,
)
from tpo.data.records import AnnotationError, LoadReport, Record
from tpo.data.templates import (
    MASK_ANSWER,
    REGION_ANSWER,
    TEMPORAL_ANSWER,
    mask_question,
    region_question,
    temporal_question,
)
from tpo.data.video import IMAGE_SUFFIXES

QVH_EXPECTED = (
    'a QVHighlights object {"qid", "query", "duration", "vid", "relevant_windows", '
    '"relevant_clip_ids", "saliency_scores"}'
)


def _qvh_record(obj: dict, where: str, videos: Path, split: str, dataset: str) -> Record:
    qid = need_str(obj, "qid", where, "an int query id")
    query = need_str(obj, "query", where, "the query sentence")
    vid = need_str(obj, "vid", where, "the video id")
    duration = need_number(obj, "duration", where, "the video duration in seconds")
    if duration <= 0:
        raise AnnotationError(f"{where}: qid {qid}: duration {duration:g} must be > 0", "bad_value")
    if "relevant_windows" not in obj and split == "test":
        raw_windows: list = []  # the QVHighlights test split ships without labels
    else:
        raw_windows = need(obj, "relevant_windows", where, "a list of [start, end] seconds")
        if not isinstance(raw_windows, list) or not raw_windows:
            raise AnnotationError(
                f"{where}: qid {qid}: relevant_windows {raw_windows!r}, expected a non-empty "
                "list of [start, end] seconds",
                "bad_window",
            )
    windows = [check_window(w, duration, where, qid) for w in raw_windows]
    clip_ids = obj.get("relevant_clip_ids", [])
    scores = obj.get("saliency_scores", [])
    n_clips = int(-(-duration // 2))  # 2-s clips covering the video
    if (
        not isinstance(clip_ids, list)
        or not isinstance(scores, list)
        or len(clip_ids) != len(scores)
    ):
        raise AnnotationError(
            f"{where}: qid {qid}: relevant_clip_ids and saliency_scores must be lists of the "
            f"same length, got {clip_ids!r} and {scores!r}",
            "bad_saliency",
        )
    for cid, row in zip(clip_ids, scores):
        ok_id = isinstance(cid, int) and not isinstance(cid, bool) and 0 <= cid < n_clips
        ok_row = (
            isinstance(row, list)
            and row
            and all(
                isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 4 for v in row
            )
        )
        if not (ok_id and ok_row):
            raise AnnotationError(
                f"{where}: qid {qid}: clip {cid!r} scores {row!r}, expected a clip id in "
                f"[0, {n_clips}) and annotator scores in [0, 4]",
                "bad_saliency",
            )
    return Record(
        video=resolve(videos, f"{vid}.mp4"),
        question=temporal_question(query, qid),
        answer=TEMPORAL_ANSWER,
        task="temporal",
        qid=qid,
        source=where,
        dataset=dataset,
        duration=duration,
        windows=windows,
        clip_ids=list(clip_ids),
        saliency=[[float(v) for v in row] for row in scores],
    )


def load_qvh(
    annotation: Path, videos: Path, *, split: str, strict: bool, report: LoadReport, dataset: str
) -> list[Record]:
    """QVHighlights jsonl, one query per line; video `{videos}/{vid}.mp4`."""
    records: list[Record] = []
    for _, where, line in numbered_lines(annotation):
        with report.item(strict):
            obj = parse_json_line(line, where, QVH_EXPECTED)
            records.append(_qvh_record(obj, where, videos, split, dataset))
    return records


def load_charades(
    annotation: Path, videos: Path, *, split: str, strict: bool, report: LoadReport, dataset: str
) -> list[Record]:
    """Charades-STA txt lines `vid start end##sentence`; qid = the 1-based line number."""
    records: list[Record] = []
    for lineno, where, line in numbered_lines(annotation):
        with report.item(strict):
            head, sep, sentence = line.partition("##")
            parts = head.split()
            if not sep or len(parts) != 3 or not sentence.strip():
                raise AnnotationError(
                    f"{where}: expected 'vid start end##sentence', got {line.strip()!r}",
                    "malformed",
                )
            try:
                start, end = float(parts[1]), float(parts[2])
            except ValueError as err:
                raise AnnotationError(
                    f"{where}: start/end {parts[1]!r} {parts[2]!r} are not seconds "
                    "(expected 'vid start end##sentence')",
                    "malformed",
                ) from err
            qid = str(lineno)
            window = check_window([start, end], None, where, qid)
            records.append(
                Record(
                    video=resolve(videos, f"{parts[0]}.mp4"),
                    question=temporal_question(sentence, qid),
                    answer=TEMPORAL_ANSWER,
                    task="temporal",
                    qid=qid,
                    source=where,
                    dataset=dataset,
                    windows=[window],
                )
            )
    return records


def load_refcoco(
    annotation: Path, videos: Path, *, split: str, strict: bool, report: LoadReport, dataset: str
) -> list[Record]:
    """RefCOCO-style json list of {id, video, frame_index, time, expression, bbox xywh, width,
    height}; `video` is relative to `videos` (an image file for the still-image datasets)."""
    items = read_json(annotation)
    if not isinstance(items, list):
        raise AnnotationError(f"{annotation}: expected a JSON list of box annotations", "malformed")
    records: list[Record] = []
    for i, obj in enumerate(items):
        where = f"{annotation}:[{i}]"
        with report.item(strict):
            box_id = need_str(obj, "id", where, "the annotation id")
            where = f"{annotation}:[{i}] (id {box_id})"
            video = need_str(obj, "video", where, "the video or image file name")
            expression = need_str(obj, "expression", where, "the referring expression")
            width = need_number(obj, "width", where, "the frame width in pixels")
            height = need_number(obj, "height", where, "the frame height in pixels")
            box = check_box_xywh(need(obj, "bbox", where, "[x, y, w, h]"), width, height, where)
            is_image = Path(video).suffix.lower() in IMAGE_SUFFIXES
            frame_index = int(number(obj.get("frame_index", 0), where, "a frame index"))
            time = number(obj.get("time", 0.0), where, "the frame time in seconds")
            records.append(
                Record(
                    video=resolve(videos, video),
                    question=region_question(expression, box_id, None if is_image else time),
                    answer=REGION_ANSWER,
                    task="region",
                    qid=box_id,
                    source=where,
                    dataset=dataset,
                    box=box,
                    frame_index=frame_index,
                    frame_time=time,
                    width=int(width),
                    height=int(height),
                )
            )
    return records


def _frame_numbers(frames: list) -> list[int]:
    """Video frame index of each listed frame: its number when all names are numeric."""
    if all(isinstance(f, str | int) and str(f).isdigit() for f in frames):
        return [int(f) for f in frames]
    return list(range(len(frames)))


def _mevis_video(entry: dict, where: str) -> tuple[list, dict]:
    frames = need(entry, "frames", where, "the list of frame names")
    expressions = need(entry, "expressions", where, "{exp_id: {exp, anno_id}}")
    if not isinstance(frames, list) or not isinstance(expressions, dict):
        raise AnnotationError(
            f"{where}: expected 'frames' a list and 'expressions' an object", "malformed"
        )
    return frames, expressions


def _expression_masks(
    anno_ids: list, n_frames: int, mask_dict: dict, mask_path: Path, where: str
) -> dict[int, dict]:
    """Position in the frame list -> RLE union of the expression's objects on that frame."""
    per_frame: dict[int, list[dict]] = {}
    frame_size = None
    for anno in anno_ids:
        rles = mask_dict.get(str(anno))
        if rles is None:
            raise AnnotationError(
                f"{mask_path}: missing key '{anno}' (anno_id of {where}), expected a list of "
                "per-frame COCO RLE or null",
                "missing_key",
            )
        if not isinstance(rles, list) or len(rles) != n_frames:
            got = len(rles) if isinstance(rles, list) else type(rles).__name__
            raise AnnotationError(
                f"{mask_path}: anno_id {anno}: expected {n_frames} per-frame entries (one per "
                f"listed frame), got {got}",
                "bad_value",
            )
        for j, rle in enumerate(rles):
            if rle is None:
                continue
            if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
                raise AnnotationError(
                    f"{mask_path}: anno_id {anno} frame {j}: expected a COCO RLE "
                    "{'size': [h, w], 'counts': ...} or null",
                    "bad_value",
                )
            size = rle["size"]
            if not (
                isinstance(size, list)
                and len(size) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
            ):
                raise AnnotationError(
                    f"{mask_path}: anno_id {anno} frame {j}: size {size!r}, expected [h, w] "
                    "positive ints",
                    "bad_value",
                )
            frame_size = frame_size or size
            if size != frame_size:
                raise AnnotationError(
                    f"{mask_path}: anno_id {anno} frame {j}: size {size}, but {where}'s other "
                    f"masks are {frame_size} (expected one frame size per expression)",
                    "bad_value",
                )
            counts = rle["counts"]
            if isinstance(counts, list) and sum(counts) != size[0] * size[1]:
                raise AnnotationError(
                    f"{mask_path}: anno_id {anno} frame {j}: uncompressed counts cover "
                    f"{sum(counts)} pixels, expected h x w = {size[0] * size[1]}",
                    "bad_value",
                )
            try:
                if isinstance(counts, list):  # uncompressed RLE -> compressed
                    rle = mask_utils.frPyObjects(rle, *size)
                area = int(mask_utils.area(rle))
            except (TypeError, ValueError) as err:
                raise AnnotationError(
                    f"{mask_path}: anno_id {anno} frame {j}: not a valid COCO RLE ({err})",
                    "bad_value",
                ) from err
            if area == 0:
                raise AnnotationError(
                    f"{mask_path}: anno_id {anno} frame {j}: mask is empty (RLE decodes to all "
                    "zeros; expected null for a frame without the object)",
                    "empty_mask",
                )
            per_frame.setdefault(j, []).append(rle)
    if not per_frame:
        raise AnnotationError(
            f"{mask_path}: anno_id {', '.join(map(str, anno_ids)) or '(none)'} of {where}: the "
            "expression has no mask on any frame",
            "empty_mask",
        )
    out = {}
    for j, rles in per_frame.items():
        rle = rles[0] if len(rles) == 1 else mask_utils.merge(rles, intersect=False)
        if isinstance(rle["counts"], bytes):
            rle = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
        out[j] = rle
    return out


def load_mevis(
    annotation: Path, videos: Path, *, split: str, strict: bool, report: LoadReport, dataset: str
) -> list[Record]:
    """MeViS folder: meta_expressions.json + mask_dict.json (anno_id -> per-frame RLE or null).

    One record per expression; the target is the union of its anno_ids' masks. The video is
    `{videos}/{vid}` when that is a frame folder, else `{videos}/{vid}.mp4`.
    """
    meta_path, mask_path = annotation / "meta_expressions.json", annotation / "mask_dict.json"
    meta = read_json(meta_path)
    mask_dict = read_json(mask_path)
    vids = need(meta, "videos", str(meta_path), "{vid: {expressions, frames}}")
    if not isinstance(vids, dict) or not isinstance(mask_dict, dict):
        raise AnnotationError(
            f"{meta_path} / {mask_path}: expected objects keyed by video id / anno_id", "malformed"
        )
    records: list[Record] = []
    for vid, entry in vids.items():
        where_vid = f"{meta_path}:videos.{vid}"
        parsed = None
        with report.item(strict):
            parsed = _mevis_video(entry, where_vid)
        if parsed is None:
            continue
        frames, expressions = parsed
        numbers = _frame_numbers(frames)
        folder = videos / vid
        video = str(folder) if folder.is_dir() else resolve(videos, f"{vid}.mp4")
        for exp_id, exp in expressions.items():
            where = f"{where_vid}.expressions.{exp_id}"
            with report.item(strict):
                text = need_str(exp, "exp", where, "the referring expression")
                anno_ids = need(exp, "anno_id", where, "a list of anno_ids")
                if not isinstance(anno_ids, list):
                    anno_ids = [anno_ids]
                by_pos = _expression_masks(anno_ids, len(frames), mask_dict, mask_path, where)
                first = next(iter(by_pos.values()))
                qid = f"{vid}_{exp_id}"
                records.append(
                    Record(
                        video=video,
                        question=mask_question(text, qid),
                        answer=MASK_ANSWER,
                        task="mask",
                        qid=qid,
                        source=where,
                        dataset=dataset,
                        masks={numbers[j]: rle for j, rle in sorted(by_pos.items())},
                        mask_frames=numbers,
                        height=int(first["size"][0]),
                        width=int(first["size"][1]),
                    )
                )
    return records
