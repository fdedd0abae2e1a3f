"""The compressed-artifact format: one folder that rebuilds a runnable model, holding no float copy of what it
compresses.

    compression.json     format, per tensor: codec, parameters, shape, dtype, payload field shapes and bit
                         widths, bits and bits per weight, error; totals over the whole model
    payload.safetensors  `<tensor>::<field>` packed payloads (integer fields bit-packed, floats as stored)
                         and kept tensors (norms, biases...) under their own names
    config.json, generation_config.json, tokenizer files

`bitnet.json` is carried over when the input was a BitNet checkpoint: its ternary layers pass through
with their packed codes (`ternary` entries) and are rebuilt as PackedBitLinear layers.

`load` decodes every tensor once and returns a transformers model; `export_hf` writes the decoded model as
a plain HF folder (a BitNet base through the BitNet export); `check_size` verifies the
payload's bytes on disk against the accounted bits (so an artifact can never silently hold raw weights).
"""
from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file

from ..compression.codecs import get_codec
from ..compression.codecs.base import Encoded
from . import bitnet, hf
from .files import copy_side_files

NAME = "compressed"
MANIFEST = "compression.json"
PAYLOAD = "payload.safetensors"
FORMAT = "agent-forge-compressed/1"
SEP = "::"
EXPORT_NOTE = "every tensor decoded from the compressed artifact (float weights)"


def detect(folder: str | Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def tensor_entry(enc: Encoded, error: float | None, rule: int) -> dict[str, Any]:
    return {
        "codec": enc.codec, "params": enc.params, "shape": list(enc.shape),
        "widths": {k: list(v) for k, v in enc.widths.items()},
        "fields": {k: list(v.shape) for k, v in enc.payload.items()},
        "extra_bits": enc.extra_bits, "bits": enc.bits, "bits_per_weight": enc.bits_per_weight,
        "error": error, "rule": rule,
    }


def kept_entry(t: torch.Tensor, rule: int, codec: str = "keep") -> dict[str, Any]:
    return {"codec": codec, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
            "bits": t.numel() * t.element_size() * 8, "bits_per_weight": t.element_size() * 8.0, "rule": rule}


def write_artifact(folder: Path, tensors: dict[str, torch.Tensor], entries: dict[str, dict[str, Any]],
                   source: Path, extra: dict[str, Any]) -> dict[str, Any]:
    """Write payload + manifest; copy config/tokenizer (and bitnet.json) from the source checkpoint."""
    folder.mkdir(parents=True, exist_ok=False)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / PAYLOAD))
    copy_side_files(source, folder, skip=(MANIFEST,))
    weights = sum(torch.Size(e["shape"]).numel() for e in entries.values() if e["codec"] != "tied")
    bits = sum(e["bits"] for e in entries.values())
    coded = {n: e for n, e in entries.items() if e["codec"] not in ("keep", "tied")}
    coded_w = sum(torch.Size(e["shape"]).numel() for e in coded.values())
    by_codec: dict[str, dict[str, float]] = {}
    for e in entries.values():
        c = by_codec.setdefault(e["codec"], {"tensors": 0, "weights": 0, "bits": 0})
        c["tensors"] += 1
        c["weights"] += torch.Size(e["shape"]).numel()
        c["bits"] += e["bits"]
    totals = {
        "weights": weights, "bits": bits, "bits_per_weight": bits / weights,
        "coded_weights": coded_w, "coded_bits_per_weight": sum(e["bits"] for e in coded.values()) / max(coded_w, 1),
        "by_codec": by_codec, "payload_bytes": (folder / PAYLOAD).stat().st_size,
    }
    manifest = {"format": FORMAT, "tensors": entries, "totals": totals, **extra}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return totals


def check_size(folder: Path) -> dict[str, int]:
    """The payload on disk = the accounted bits, up to a byte of padding per packed field and the header.

    Raises if the file holds more (e.g. float weights smuggled in as a 'compressed' tensor)."""
    manifest = json.loads((folder / MANIFEST).read_text())
    blob = (folder / PAYLOAD).read_bytes()
    header = 8 + int.from_bytes(blob[:8], "little")
    data = len(blob) - header
    accounted = sum(e["bits"] - e.get("extra_bits", 0) for e in manifest["tensors"].values() if e["codec"] != "tied")
    fields = sum(len(e.get("widths", {})) for e in manifest["tensors"].values())
    if not accounted <= data * 8 < accounted + 8 * fields + 8:
        raise AssertionError(f"compressed payload holds {data} bytes but {accounted} bits are accounted "
                             f"(+ up to {fields} padding bytes): the artifact is not what its manifest says")
    return {"data_bytes": data, "accounted_bits": accounted, "header_bytes": header}


def decode_state(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every tensor decoded (ternary entries as their packed codes), and the manifest."""
    manifest = json.loads((folder / MANIFEST).read_text())
    stored = load_file(str(folder / PAYLOAD))
    state = {}
    for name, e in manifest["tensors"].items():
        if e["codec"] == "keep":
            state[name] = stored[name]
            continue
        if e["codec"] == "ternary":  # a BitLinear's packed codes and scale, named as the BitNet loader wants
            module = name.removesuffix(".weight")
            for f in e["passthrough"]:
                state[f"{module}.{f}"] = stored[f"{name}{SEP}{f}"]
            continue
        if e["codec"] == "tied":
            continue
        fields = {f: stored[f"{name}{SEP}{f}"] for f in e["fields"]}
        enc = Encoded.from_packed(e["codec"], e["shape"], fields, e["params"], e["widths"], e["fields"], e["extra_bits"])
        state[name] = get_codec(e["codec"]).decode(enc)
    return state, manifest


@contextmanager
def _bitnet_folder(folder: Path, state: dict[str, torch.Tensor]) -> Iterator[Path]:
    """A scratch BitNet checkpoint of the decoded state: ternary layers keep their packed codes."""
    with tempfile.TemporaryDirectory(prefix="af-decoded-") as tmp:
        copy_side_files(folder, tmp, skip=(MANIFEST,))
        save_file({k: v.contiguous() for k, v in state.items()}, str(Path(tmp) / "model.safetensors"))
        yield Path(tmp)


def load(folder: str | Path, device: str = "cpu", **_options):
    """(model, tokenizer) rebuilt from a compressed artifact; weights decoded once, here."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    state, manifest = decode_state(folder)
    if bitnet.detect(folder):
        with _bitnet_folder(folder, state) as tmp:
            return bitnet.load_bitnet(tmp, device=device)
    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    config = AutoConfig.from_pretrained(folder)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    dtypes = {n: p.dtype for n, p in model.state_dict().items()}
    missing, unexpected = model.load_state_dict({k: v.to(dtypes.get(k, v.dtype)) for k, v in state.items()}, strict=False)
    model.tie_weights()
    # tied parameters (the head sharing the embedding) appear once in the checkpoint
    aliases = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}
    if unexpected or set(missing) - aliases:
        raise RuntimeError(f"compressed artifact {folder} does not match its config: missing "
                           f"{sorted(set(missing) - aliases)[:5]}, unexpected {sorted(unexpected)[:5]}")
    return model.to(device).eval(), tok


def export_hf(folder: str | Path, out: str | Path) -> Path:
    """A plain HF folder of the decoded float weights (a ternary base: its dequantized values)."""
    folder = Path(folder)
    if bitnet.detect(folder):
        with _bitnet_folder(folder, decode_state(folder)[0]) as tmp:
            return bitnet.export_hf(tmp, out)
    model, tok = load(folder)
    return hf.save(model, tok, out)
