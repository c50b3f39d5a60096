"""The benchmarks `tpo eval score` knows: name -> "module:function", imported on use.

Each function has the signature `score(gt: Path, pred: Path, **options) -> dict[str, float]`
and returns the metrics under the official evaluators' key names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

SCORERS: dict[str, str] = {
    "qvhighlights": "tpo.eval.moments:score_qvhighlights",
    "charades_sta": "tpo.eval.moments:score_charades_sta",
    "nextgqa": "tpo.eval.grounded_qa:score_nextgqa",
    "mvbench": "tpo.eval.multiple_choice:score_mvbench",
    "chair": "tpo.eval.chair:score_chair",
    "refcoco": "tpo.eval.boxes:score_refcoco",
    "mevis": "tpo.eval.video_masks:score_mevis",
    "davis": "tpo.eval.video_masks:score_davis",
    "reasonseg": "tpo.eval.image_masks:score_reasonseg",
    "lasot": "tpo.eval.tracking:score_lasot",
    "got10k": "tpo.eval.tracking:score_got10k",
}


def get_scorer(name: str) -> Callable[..., dict[str, float]]:
    """The scoring function of benchmark `name`."""
    if name not in SCORERS:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(sorted(SCORERS))}")
    module, func = SCORERS[name].split(":")
    return getattr(importlib.import_module(module), func)
