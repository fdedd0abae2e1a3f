"""The plain Hugging Face format: a folder of safetensors weights with config and tokenizer, which
`transformers` loads without Agent Forge. Also the import path for a GGUF file (dequantized on load) and
a hub id (when a hub is reachable). Weights are never read with pickle: folders without safetensors
weights are refused.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..dtypes import DTYPES
from ..errors import ModelLoadError
from .files import copy_side_files

NAME = "hf"
EXPORT_NOTE = "load with AutoModelForCausalLM.from_pretrained"


def detect(folder: str | Path) -> bool:
    """The fallback format: anything transformers may load (a folder, a .gguf file, a hub id)."""
    return True


def _looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "/", "~"))


def load(source: str | Path, device: str = "cpu", *, gguf_file: str | None = None, dtype: str = "float32",
         trust_remote_code: bool = False):
    """(model, tokenizer) from a folder, a .gguf file or a hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = str(source)
    folder = source
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    path = Path(folder)
    if path.is_file() and path.suffix == ".gguf":
        folder, gguf_file = str(path.parent), path.name
    if path.exists():
        if path.is_dir() and gguf_file is None and not list(path.glob("*.safetensors")):
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            if len(ggufs) == 1:
                gguf_file = ggufs[0]
            else:
                raise ModelLoadError(
                    f"{source!r} holds no *.safetensors weights"
                    + (f" and several GGUF files {ggufs}: set model.gguf_file" if ggufs else "")
                    + "; Agent Forge loads safetensors or GGUF only (never pickled .bin weights)"
                )
    elif not _looks_like_hub_id(source):
        raise ModelLoadError(
            f"model source {source!r} does not exist; give a local folder with safetensors weights, a .gguf "
            "file, a hub id like 'org/name', or an alias from `agent-forge models list`"
        )
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    from safetensors import SafetensorError

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[dtype], use_safetensors=not gguf_file, **kwargs)
    except SafetensorError as e:
        raise ModelLoadError(f"{source!r}: its safetensors weights are not readable ({e}): the file is truncated or not "
                             "safetensors; re-download or re-export the model") from None
    except (ValueError, KeyError) as e:
        msg = str(e)
        if "Unrecognized" in msg or "does not recognize" in msg or "not supported" in msg or isinstance(e, KeyError):
            raise ModelLoadError(f"{source!r}: unsupported architecture for causal LM loading: {msg.splitlines()[0]}") from None
        raise ModelLoadError(f"{source!r}: {msg.splitlines()[0] if msg else type(e).__name__}") from None
    except OSError as e:
        raise ModelLoadError(
            f"{source!r} could not be loaded: {str(e).splitlines()[0]}. Offline? Use a local folder, a .gguf file or an alias."
        ) from None
    if gguf_file:
        drop_quantization(model)
    check_vocab(model, tokenizer, source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer


def drop_quantization(model) -> None:
    """A GGUF-loaded model is dequantized in memory but still flagged quantized, which makes
    `save_pretrained` refuse; the weights are plain tensors, so drop the flag."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False


def check_vocab(model, tokenizer, source: str) -> None:
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise ModelLoadError(
            f"{source!r}: tokenizer has {len(tokenizer)} tokens but the model's embedding has {rows} rows; "
            "the tokenizer does not belong to this model (resize the embeddings or use the matching tokenizer)"
        )


def save(model, tokenizer, folder: str | os.PathLike) -> Path:
    """Weights (safetensors), config, generation config and tokenizer, together."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    write_side_files(model, tokenizer, folder)
    return folder


def write_side_files(model, tokenizer, folder: Path) -> None:
    """Config, generation config and tokenizer: what every format writes beside its own weights."""
    from transformers import GenerationConfig

    if getattr(model, "generation_config", None) is None:
        model.generation_config = GenerationConfig.from_model_config(model.config)
    model.config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def export_hf(src: str | Path, out: str | Path) -> Path:
    """Already the HF format: the weights and side files as they are."""
    out = Path(out)
    copy_side_files(src, out)
    for f in Path(src).iterdir():
        if f.suffix == ".safetensors" or f.name.endswith(".safetensors.index.json"):
            shutil.copy2(f, out / f.name)
    return out
