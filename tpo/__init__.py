"""tpo: a trainable, testable multi-task video MLLM (Task Preference Optimization style).

Importing `tpo` has no side effects: nothing is built, loaded or downloaded until asked for.
"""

__version__ = "0.1.0"


def load(path, **kwargs):
    """A `tpo.infer.api.TPOPipeline` for an inference or checkpoint folder (imports torch now)."""
    from tpo.infer.api import load as _load

    return _load(path, **kwargs)
