"""tpo: a trainable, testable multi-task video MLLM (Task Preference Optimization style).

Importing `tpo` has no side effects: nothing is built, loaded or downloaded until asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tpo.infer.api import TPOPipeline

__version__ = "0.1.0"


def load(path: str | Path, **kwargs: Any) -> TPOPipeline:
    """A `tpo.infer.api.TPOPipeline` for an inference or checkpoint folder (imports torch now)."""
    # imported here, not at the top: `import tpo` must not import torch
    from tpo.infer.api import load as _load

    return _load(path, **kwargs)
