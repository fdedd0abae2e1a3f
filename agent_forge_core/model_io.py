"""Model loading and saving.

Sources: a local HF folder (safetensors), a GGUF file (dequantized on load), a hub id (when the hub is
reachable) or a built-in alias (see `aliases.py`). Weights are never read with pickle: folders without
safetensors weights are refused.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import ModelLoadError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "/", "~"))


def load_model(
    source: str,
    *,
    gguf_file: str | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
):
    """(model, tokenizer) from a folder, a .gguf file, an alias or a hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .aliases import ALIASES, ensure_alias

    if source in ALIASES:
        folder = str(ensure_alias(source))
    else:
        folder = os.path.expanduser(source)
    from .bitnet.checkpoint import is_bitnet_folder, load_bitnet

    from .compression.artifact import is_compressed_folder, load_compressed

    if is_compressed_folder(folder):  # compressed artifact: every tensor decoded once, here
        return load_compressed(folder, device=str(resolve_device(device)))
    if is_bitnet_folder(folder):  # packed ternary checkpoint: rebuilt with packed inference layers
        return load_bitnet(folder, device=str(resolve_device(device)))
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
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[dtype], use_safetensors=not gguf_file, **kwargs)
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
    return model.to(resolve_device(device)), tokenizer


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


def save_model(model, tokenizer, folder: str | os.PathLike) -> Path:
    """Weights (safetensors), config, generation config and tokenizer, together."""
    from transformers import GenerationConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if getattr(model, "generation_config", None) is None:
        model.generation_config = GenerationConfig.from_model_config(model.config)
    model.save_pretrained(folder, safe_serialization=True)
    model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
