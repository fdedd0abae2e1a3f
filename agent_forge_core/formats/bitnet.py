"""The BitNet format: packed ternary codes on disk, never the dequantized floats.

Files: `model.safetensors` holds every tensor that is not a BitLinear weight (embeddings, norms, head)
plus, per BitLinear, `<name>.packed` (uint8) and `<name>.gamma` (float32: [1], or [out] with one scale per
output channel, `scales`); `bitnet.json` holds the format, activation bits, norm flag, the scales' layout,
the embeddings' stored dtype (`embeddings`: float32, or bfloat16 as the packed model then also computes the
head in, `bitnet/embeddings16.py`) and each layer's shape; config, generation config and tokenizer as usual. `load_bitnet` rebuilds the model with PackedBitLinear layers
(inference) or BitLinear layers whose latent weights are the dequantized ternary values (to keep training).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..bitnet.bitlinear import BitLinear, PackedBitLinear
from ..bitnet.convert import bit_layers
from ..bitnet.embeddings16 import DTYPES, use_16bit_embeddings
from ..bitnet.packing import bits_per_weight, pack, unpack
from ..bitnet.ternary import dequant_weight, weight_codes
from . import hf

NAME = "bitnet"
META = "bitnet.json"
EXPORT_NOTE = "float weights with the ternary values (activations not quantized)"


def detect(folder: str | Path) -> bool:
    return (Path(folder) / META).is_file()


def ternary_layers(folder: str | Path) -> dict[str, list[int]]:
    """{BitLinear module name: weight shape} of a BitNet checkpoint; empty for any other."""
    meta = Path(folder) / META
    return json.loads(meta.read_text())["layers"] if meta.is_file() else {}


def embedding_ids(model) -> set[int]:
    """ids of the input embedding and output head weights (one when tied)."""
    return {id(m.weight) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}


def embedding_names(model) -> set[str]:
    """State-dict names of the input embedding and output head weights."""
    ids = embedding_ids(model)
    return {n for n, p in model.named_parameters(remove_duplicate=False) if id(p) in ids}


def layout(folder: str | Path) -> dict[str, str]:
    """`save_bitnet`'s storage arguments of a BitNet checkpoint (a stage that rewrites one keeps them)."""
    meta = json.loads((Path(folder) / META).read_text())
    return {"fmt": meta["format"], "embeddings": meta.get("embeddings", "float32")}


def save_bitnet(model, tokenizer, folder: str | Path, fmt: str, embeddings: str = "float32") -> dict:
    """Write the packed checkpoint, the embeddings (and an untied head) stored as `embeddings`; returns the
    bits-per-weight account."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    layers = bit_layers(model)
    if not layers:
        raise ValueError("save_bitnet: the model has no BitLinear layers; convert it first")
    if embeddings not in DTYPES:
        raise ValueError(f"save_bitnet: embeddings={embeddings!r}; allowed: {list(DTYPES)}")
    tensors, meta_layers = {}, {}
    skip = {f"{n}.weight" for n in layers}
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    emb = embedding_names(model)
    for name, t in model.state_dict().items():
        if name in skip or (tied and name == "lm_head.weight"):
            continue
        tensors[name] = t.detach().to(DTYPES[embeddings] if name in emb else t.dtype).contiguous().cpu()
    for name, layer in layers.items():
        codes, gamma = weight_codes(layer.weight, per_channel=layer.per_channel)
        tensors[f"{name}.packed"] = pack(codes, fmt)
        tensors[f"{name}.gamma"] = gamma.reshape(-1)
        meta_layers[name] = list(layer.weight.shape)
    save_file(tensors, str(folder / "model.safetensors"))
    first = next(iter(layers.values()))
    account = bits_account(model, fmt, embedding_bits=torch.finfo(DTYPES[embeddings]).bits)
    meta = {"format": fmt, "act_bits": first.act_bits, "norm": first.norm, "embeddings": embeddings,
            "scales": "channel" if first.per_channel else "tensor",
            "layers": meta_layers, "account": account}
    (folder / META).write_text(json.dumps(meta, indent=1))
    hf.write_side_files(model, tokenizer, folder)
    return account


def bits_account(model, fmt: str, embedding_bits: int | None = None) -> dict:
    """Bits per weight of the whole model: ternary layers at the packing's rate plus a 32-bit scale per
    layer (per output row with per-channel scales); every other parameter at its stored width (embeddings and
    head at `embedding_bits` where given; tied counted once)."""
    layers = bit_layers(model)
    emb = embedding_ids(model)
    ternary = sum(m.weight.numel() for m in layers.values())
    ternary_bits = sum(math.ceil(m.weight.numel() * bits_per_weight(fmt) / 8) * 8
                       + 32 * (m.out_features if m.per_channel else 1) for m in layers.values())
    bit_params = {id(m.weight) for m in layers.values()}
    other, other_bits = 0, 0
    for p in {id(p): p for p in model.parameters()}.values():
        if id(p) in bit_params:
            continue
        other += p.numel()
        other_bits += p.numel() * (embedding_bits if embedding_bits and id(p) in emb else p.element_size() * 8)
    total = ternary + other
    return {
        "ternary_params": ternary, "other_params": other,
        "bits_per_weight_ternary_layers": ternary_bits / ternary,
        "bits_per_weight_model": (ternary_bits + other_bits) / total,
    }


def latent_from_codes(codes: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Latent weights whose absmean quantization gives back exactly (codes, gamma).

    With p the fraction of non-zero codes, W = codes * gamma / p has mean|W| = p * gamma / p = gamma, and
    round(W / gamma) = round(codes / p) clamps back to codes (|codes / p| >= 1 where codes != 0). So
    training resumes from the same quantized function the packed checkpoint computes. Per-channel gamma
    ([out, 1]): the same per row, p counted in that row (an all-zero row stays zero).
    """
    if gamma.dim() == 2:
        p = (codes != 0).float().mean(dim=-1, keepdim=True)
        return torch.where(p > 0, codes.float() * (gamma / p.clamp(min=1e-12)), torch.zeros(()))
    p = (codes != 0).float().mean()
    if p == 0:
        return torch.zeros_like(codes, dtype=torch.float32)
    return codes.float() * (gamma / p)


def load(folder: str | Path, device: str = "cpu", **_options):
    """The packed inference model (PackedBitLinear layers) and its tokenizer."""
    return load_bitnet(folder, device=device)


def load_bitnet(folder: str | Path, trainable: bool = False, device: str = "cpu", embeddings16: bool = True):
    """The model of a BitNet checkpoint: PackedBitLinear layers (inference) or BitLinear layers with latent
    weights (`trainable`). 16-bit stored embeddings are held and multiplied in 16 bits for inference
    (`embeddings16`), else widened to float32 parameters (training, export)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    meta = json.loads((folder / META).read_text())
    config = AutoConfig.from_pretrained(folder)
    model = AutoModelForCausalLM.from_config(config)  # random init, overwritten below
    tensors = load_file(str(folder / "model.safetensors"))
    fmt, per_channel = meta["format"], meta.get("scales", "tensor") == "channel"
    for name, shape in meta["layers"].items():
        packed, gamma = tensors.pop(f"{name}.packed"), tensors.pop(f"{name}.gamma")
        gamma = gamma.reshape(-1, 1) if per_channel else gamma[0]
        bias = tensors.pop(f"{name}.bias", None)
        if trainable:
            layer = BitLinear(shape[1], shape[0], bias is not None, meta["act_bits"], meta["norm"], per_channel)
            with torch.no_grad():
                layer.weight.copy_(latent_from_codes(unpack(packed, shape, fmt), gamma))
                if bias is not None:
                    layer.bias.copy_(bias)
        else:
            layer = PackedBitLinear(packed, gamma, tuple(shape), fmt, bias, meta["act_bits"], meta["norm"])
        model.set_submodule(name, layer)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [m for m in missing if m.rpartition(".")[0] not in meta["layers"]]  # set above
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
        missing = [m for m in missing if m != "lm_head.weight"]
    if missing or unexpected:
        raise ValueError(
            f"{folder}: BitNet checkpoint does not match its config (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}); it is incomplete or from another model: re-create it"
        )
    dtype = DTYPES[meta.get("embeddings", "float32")]
    if dtype != torch.float32 and embeddings16 and not trainable:  # stored 16-bit already: the cast is exact
        use_16bit_embeddings(model, dtype)
    tok = AutoTokenizer.from_pretrained(folder)
    return model.to(device).eval(), tok


def export_hf(folder: str | Path, out: str | Path) -> Path:
    """A plain HF folder (float weights gamma * W~, so the ternary structure is kept) that
    AutoModelForCausalLM loads without Agent Forge. Activations are not quantized there: its logits
    are close to, not equal to, the packed inference path."""
    from torch import nn

    model, tok = load_bitnet(folder, embeddings16=False)
    for name, mod in list(model.named_modules()):
        if isinstance(mod, PackedBitLinear):
            lin = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None)
            with torch.no_grad():
                lin.weight.copy_(dequant_weight(mod.codes, mod.gamma, torch.float32))
                if mod.bias is not None:
                    lin.bias.copy_(mod.bias)
            model.set_submodule(name, lin)
    return hf.save(model, tok, out)
