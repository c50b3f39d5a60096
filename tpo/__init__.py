"""tpo: a trainable, testable multi-task video MLLM (Task Preference Optimization style).

Importing `tpo` has no side effects: nothing is built, loaded or downloaded until asked for.
"""

__version__ = "0.1.0"
