"""POPEN's textual preference set P_t: tuples {I, x, y, y_c, L_y, L_yc} in a jsonl file.

One record per line:
    {"video": PATH (or "image": PATH), "instruction": x, "y": the model's response,
     "y_c": the corrected response, "L_y": [int, ...], "L_yc": [int, ...]}
L_y / L_yc (optional) are the indices of the edited tokens in the answer's own token sequence
(the answer tokenised alone, without special tokens, as `tpo.model.prompt.PromptCollator`
tokenises answers). Missing ones are filled from a token-level diff (`fill_edit_indices`;
`tpo popen diff` on the command line). Other keys are kept in `extra` and written back.
Paths are kept as written.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tpo.data.loader_utils import numbered_lines
from tpo.eval.runner_io import write_text_atomic

KNOWN_KEYS = ("video", "image", "instruction", "y", "y_c", "L_y", "L_yc")


@dataclass
class TextualPreference:
    """One textual preference: media path (`image` True when it is a still image), instruction,
    the model's response `y`, the corrected response `y_c`, and the edited-token indices
    `l_y` (in y) and `l_yc` (in y_c), None until filled; `source` is "file:line" for errors."""

    video: str
    instruction: str
    y: str
    y_c: str
    l_y: list[int] | None = None
    l_yc: list[int] | None = None
    image: bool = False
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        """The jsonl record of this preference (L_y / L_yc only when set)."""
        rec: dict[str, Any] = {("image" if self.image else "video"): self.video}
        rec.update(instruction=self.instruction, y=self.y, y_c=self.y_c)
        if self.l_y is not None:
            rec["L_y"] = list(self.l_y)
        if self.l_yc is not None:
            rec["L_yc"] = list(self.l_yc)
        rec.update(self.extra)
        return rec


def _index_list(value: Any, where: str, key: str) -> list[int] | None:
    if value is None:
        return None
    ok = isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    )
    if not ok:
        raise ValueError(
            f"{where}: key '{key}': expected a list of non-negative ints, got {value!r}"
        )
    return list(value)


def parse_record(rec: Any, where: str) -> TextualPreference:
    """One decoded P_t record -> `TextualPreference`; errors name `where` (file:line) and key."""
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    media = [k for k in ("video", "image") if k in rec]
    if len(media) != 1:
        raise ValueError(f"{where}: key 'video' (or 'image'): expected exactly one, got {media}")
    for key in (media[0], "instruction", "y", "y_c"):
        if key not in rec:
            raise ValueError(f"{where}: missing key '{key}'")
        if not isinstance(rec[key], str):
            raise ValueError(f"{where}: key '{key}': expected a string, got {rec[key]!r}")
    for key in (media[0], "y", "y_c"):
        if not rec[key].strip():
            raise ValueError(f"{where}: key '{key}': expected a non-empty string")
    return TextualPreference(
        video=rec[media[0]],
        instruction=rec["instruction"],
        y=rec["y"],
        y_c=rec["y_c"],
        l_y=_index_list(rec.get("L_y"), where, "L_y"),
        l_yc=_index_list(rec.get("L_yc"), where, "L_yc"),
        image=media[0] == "image",
        source=where,
        extra={k: v for k, v in rec.items() if k not in KNOWN_KEYS},
    )


def parse_line(line: str, where: str) -> TextualPreference:
    """One jsonl line -> `TextualPreference`; errors name `where` (file:line) and the key."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not valid JSON ({err.msg})") from err
    return parse_record(rec, where)


def load_textual_preferences(path: str | Path) -> list[TextualPreference]:
    """Read a jsonl of textual preferences (blank lines skipped). Bad input raises ValueError
    naming file:line and the key; a missing file raises FileNotFoundError."""

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"textual preferences: no file {path}")
    return [parse_line(line, where) for _, where, line in numbered_lines(path)]


def write_textual_preferences(prefs: Sequence[TextualPreference], path: str | Path) -> Path:
    """Write `prefs` as jsonl, atomically (temp file + os.replace)."""

    text = "".join(json.dumps(p.to_record(), ensure_ascii=False) + "\n" for p in prefs)
    return write_text_atomic(path, text)


def edited_token_indices(
    y_ids: Sequence[int], yc_ids: Sequence[int]
) -> tuple[list[int], list[int]]:
    """(L_y, L_yc): indices in `y_ids` of replaced or deleted tokens and indices in `yc_ids` of
    replaced or inserted tokens, from difflib.SequenceMatcher(autojunk=False) opcodes. Equal
    sequences give ([], []); a pure insertion leaves L_y empty, a pure deletion L_yc."""
    l_y: list[int] = []
    l_yc: list[int] = []
    matcher = difflib.SequenceMatcher(None, list(y_ids), list(yc_ids), autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag in ("replace", "delete"):
            l_y.extend(range(i1, i2))
        if tag in ("replace", "insert"):
            l_yc.extend(range(j1, j2))
    return l_y, l_yc


def fill_edit_indices(
    prefs: Sequence[TextualPreference],
    tokenize: Callable[[str], list[int]],
    *,
    check: bool = True,
) -> list[TextualPreference]:
    """Copies of `prefs` whose missing l_y / l_yc are filled by `edited_token_indices` over
    `tokenize(y)` and `tokenize(y_c)` (the answer's own tokens); given lists are kept. With
    `check`, given indices past the end of their answer's tokens raise ValueError (file:line)."""
    out = []
    for p in prefs:
        y_ids, yc_ids = tokenize(p.y), tokenize(p.y_c)
        if check:
            for key, given, ids in (("L_y", p.l_y, y_ids), ("L_yc", p.l_yc, yc_ids)):
                if given and max(given) >= len(ids):
                    raise ValueError(
                        f"{p.source}: key '{key}': index {max(given)} out of range for an "
                        f"answer of {len(ids)} tokens"
                    )
        l_y, l_yc = p.l_y, p.l_yc
        if l_y is None or l_yc is None:
            diff_y, diff_yc = edited_token_indices(y_ids, yc_ids)
            l_y = diff_y if l_y is None else l_y
            l_yc = diff_yc if l_yc is None else l_yc
        out.append(dataclasses.replace(p, l_y=list(l_y), l_yc=list(l_yc), extra=dict(p.extra)))
    return out
