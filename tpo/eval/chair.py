"""CHAIR object hallucination (Rohrbach et al. 2018, LisaAnne/Hallucination `utils/chair.py`).

Object mentions in a response are mapped to the 80 COCO categories with the word lists of
`coco_synonyms.json` (ours: singular words and phrases per category, derived regular plurals,
listed irregular ones, and compounds such as 'baby dog' -> dog or 'hot dog' -> hot dog, matched
longest first). Every mention counts, repeats included, as in the original.
CHAIR_i = mentions of objects absent from the GT / all mentions (0 when there are none);
CHAIR_s = responses with at least one such mention / all responses. Percent.

Files: GT json {id: [object names]} or {id: {"objects": [...], "captions": [...]}} (names are
category names or any of their words; objects mentioned in GT captions count as present, as
the original adds the COCO caption objects); predictions jsonl {"id": id, "response": text}
("caption" or "pred" also accepted for the text, "qid" or "image_id" for the id).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from tpo.eval.io import ScoreError, check_ids, flag, ident, read_json, read_records, text

SYNONYMS_FILE = Path(__file__).with_name("coco_synonyms.json")
TEXT_KEYS = ("response", "caption", "pred")
ID_KEYS = ("id", "qid", "image_id")
_WORD = re.compile(r"[a-z]+")


def plural(phrase: str, irregular: dict[str, str]) -> str:
    """The plural of a phrase: its last word pluralised (irregular table, then English rules)."""
    *head, last = phrase.split(" ")
    if last in irregular:
        last = irregular[last]
    elif last.endswith(("s", "x", "z", "ch", "sh")):
        last += "es"
    elif last.endswith("y") and last[-2:-1] not in "aeiou":
        last = last[:-1] + "ies"
    else:
        last += "s"
    return " ".join([*head, last])


@lru_cache(maxsize=4)
def load_vocabulary(path: Path = SYNONYMS_FILE) -> dict[str, str | None]:
    """Phrase (singular or plural, lowercase) -> COCO category (None: names no object)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    irregular = data["irregular_plurals"]
    vocab: dict[str, str | None] = {}
    for category, words in data["categories"].items():
        for word in [category, *words]:
            vocab[word] = category
            vocab.setdefault(plural(word, irregular), category)
    for phrase, category in data["compounds"].items():
        vocab[phrase] = category
        vocab[plural(phrase, irregular)] = category
    return vocab


def extract_objects(
    response: str, vocab: dict[str, str | None] | None = None
) -> list[tuple[str, str]]:
    """The (phrase, COCO category) mentions of a text, in order, longest phrases first."""
    vocab = load_vocabulary() if vocab is None else vocab
    longest = max(p.count(" ") + 1 for p in vocab)
    words = _WORD.findall(response.lower())
    found: list[tuple[str, str]] = []
    i = 0
    while i < len(words):
        for n in range(min(longest, len(words) - i), 0, -1):
            phrase = " ".join(words[i : i + n])
            if phrase in vocab:
                if vocab[phrase] is not None:
                    found.append((phrase, vocab[phrase]))
                i += n
                break
        else:
            i += 1
    return found


def chair(responses: Sequence[str], gt_objects: Sequence[set[str]]) -> dict[str, float]:
    """CHAIRs and CHAIRi (percent) of responses against the COCO categories present in each."""
    if len(responses) != len(gt_objects):
        raise ValueError(f"{len(responses)} responses for {len(gt_objects)} ground truths")
    mentions = hallucinated = bad_responses = 0
    for response, present in zip(responses, gt_objects):
        cats = [c for _, c in extract_objects(response)]
        wrong = sum(c not in present for c in cats)
        mentions += len(cats)
        hallucinated += wrong
        bad_responses += wrong > 0
    return {
        "CHAIRs": 100.0 * bad_responses / max(len(responses), 1),
        "CHAIRi": 100.0 * hallucinated / mentions if mentions else 0.0,
    }


def _read_gt(path: Path) -> dict[str, set[str]]:
    data = read_json(path)
    if not isinstance(data, dict) or not data:
        raise ScoreError(f'{path}: expected an object {{id: [objects]}} or {{id: {{"objects"}}}}')
    vocab = load_vocabulary()
    out: dict[str, set[str]] = {}
    for key, entry in data.items():
        at = f"{path}: id {key}"
        objects, captions = (entry, []) if isinstance(entry, list) else (None, None)
        if isinstance(entry, dict):
            objects, captions = entry.get("objects", []), entry.get("captions", [])
        if not isinstance(objects, list) or not isinstance(captions, list):
            raise ScoreError(f"{at}: expected a list of object names (or objects/captions lists)")
        present = set()
        for name in objects:
            word = text(name, at, "an object name").strip().lower()
            if vocab.get(word) is None:
                raise ScoreError(f"{at}: object {name!r} is not a COCO category or synonym")
            present.add(vocab[word])
        for caption in captions:
            present.update(c for _, c in extract_objects(text(caption, at, "a caption"), vocab))
        out[str(key)] = present
    return out


def score_chair(gt: Path, pred: Path, *, allow_missing: bool | str = False) -> dict[str, float]:
    """CHAIRs / CHAIRi (percent) of the responses in `pred` against the objects in `gt`.

    Several responses may share an id; allow_missing: GT ids without a response are fine.
    """
    truth = _read_gt(Path(gt))
    ids, responses = [], []
    for where, obj in read_records(Path(pred), '{"id", "response": text}'):
        id_key = next((k for k in ID_KEYS if k in obj), None)
        text_key = next((k for k in TEXT_KEYS if k in obj), None)
        if id_key is None or text_key is None:
            raise ScoreError(f"{where}: expected keys 'id' and 'response' (text)")
        key = ident(obj[id_key], where)
        ids.append(key)
        responses.append(text(obj[text_key], f"{where} (id {key})", "the response text"))
    if not ids:
        raise ScoreError(f"{pred}: no responses")
    check_ids(truth, ids, Path(pred), allow_missing=flag(allow_missing, "allow_missing"))
    return chair(responses, [truth[k] for k in ids])
