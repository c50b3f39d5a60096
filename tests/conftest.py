"""Test-wide setup: offline, deterministic, small thread pools (CI has 2 cores)."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: SAM2 at test size runs fastest so on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _find_reference() -> Path | None:
    """The official parity reference (`shared/reference/parity`, beside the checkout).

    `TPO_REFERENCE` names it; else the first ancestor of this checkout that holds
    `shared/reference/parity`; else the developers' machine's shared folder (CI clones the
    repository elsewhere). None when none exists: the parity tests then skip, saying why.
    """
    env = os.environ.get("TPO_REFERENCE")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for up in here.parents:
        cand = up / "shared" / "reference" / "parity"
        if cand.is_dir():
            return cand
    cand = Path("/work/shared/reference/parity")
    return cand if cand.is_dir() else None


@pytest.fixture(scope="session")
def parity_reference():
    """The parity folder: `official-reduced/` (checkpoint) and `expected/` (official outputs)."""
    ref = _find_reference()
    if ref is None or not (ref / "official-reduced").is_dir():
        pytest.skip("no official parity reference: set TPO_REFERENCE to shared/reference/parity")
    return ref


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    """A generated 5-video toy world (seed 0), shared read-only by the tests that score on it
    (a test module may define its own `world`)."""
    from tpo.data.toyworld import generate_toyworld

    root = tmp_path_factory.mktemp("world")
    generate_toyworld(root, 5, seed=0, workers=1)
    return root


@pytest.fixture(scope="session")
def converted_reduced(parity_reference, tmp_path_factory) -> Path:
    """`official-reduced/` converted once by `tpo convert videochat-tpo` (with its side
    configs) into a tpo inference folder."""
    from tpo.infer.convert import convert_videochat_tpo

    src = parity_reference / "official-reduced"
    out = tmp_path_factory.mktemp("converted") / "reduced"
    convert_videochat_tpo(
        src,
        out,
        llm_config=src / "llm_config.json",
        qformer_config=src / "qformer_config.json",
        sam2_config=src / "sam2.yaml",
        cgdetr_config=src / "cgdetr_config.json",
        progress=False,
    )
    return out
