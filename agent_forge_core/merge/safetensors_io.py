"""Lazy safetensors reading and streaming, sharded safetensors writing.

The safetensors layout is: 8-byte little-endian header length N, N bytes of JSON header
(`name -> {dtype, shape, data_offsets: [begin, end]}`, plus `__metadata__`), then the raw tensor bytes.
Reading seeks to one tensor's byte range and copies just that (no mmap: a merge that touches every
tensor would otherwise keep every input page resident). Writing computes the header from the planned
output shapes first, so each tensor is written as soon as it is merged and then dropped: peak memory is
the handful of tensors being merged, whatever the model size.
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelLoadError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
CODES = {v: k for k, v in DTYPES.items()}
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


def read_header(path: str | os.PathLike) -> tuple[dict, int]:
    """(header dict, byte offset where tensor data starts)."""
    bad = f"{path}: not a valid safetensors file (truncated, or another format): re-create or re-download it"
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ModelLoadError(bad)
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:  # the header cannot be longer than the file (a garbage length would allocate it)
            raise ModelLoadError(bad)
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ModelLoadError(bad) from None
    if not isinstance(header, dict) or any(
            name != "__metadata__" and not (isinstance(m, dict) and {"dtype", "shape", "data_offsets"} <= set(m))
            for name, m in header.items()):
        raise ModelLoadError(bad)
    return header, 8 + n


class LazyCheckpoint:
    """The tensors of a HF folder (single or sharded safetensors), read one at a time on demand."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if (self.folder / INDEX).is_file():
            weight_map = json.loads((self.folder / INDEX).read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        elif (self.folder / SINGLE).is_file():
            files = [SINGLE]
        else:
            raise ModelLoadError(
                f"{self.folder}: no {SINGLE} or {INDEX}; merges read safetensors checkpoints only "
                "(convert with `agent-forge export` or save_pretrained(safe_serialization=True))"
            )
        self._where: dict[str, tuple[Path, int, int]] = {}
        self.infos: dict[str, TensorInfo] = {}
        for fname in files:
            path = self.folder / fname
            header, start = read_header(path)
            for name, meta in header.items():
                if name == "__metadata__":
                    continue
                b, e = meta["data_offsets"]
                self._where[name] = (path, start + b, e - b)
                self.infos[name] = TensorInfo(name, DTYPES[meta["dtype"]], tuple(meta["shape"]))

    def names(self) -> list[str]:
        return list(self.infos)

    def get(self, name: str) -> torch.Tensor:
        path, offset, size = self._where[name]
        info = self.infos[name]
        out = torch.empty(info.shape, dtype=info.dtype)
        if size:
            raw = out.reshape(-1).view(torch.uint8).numpy()  # read straight into the tensor's memory
            with open(path, "rb", buffering=0) as f:
                f.seek(offset)
                got = f.readinto(raw)
            if got != size:
                raise ModelLoadError(f"{path}: tensor {name} is truncated ({got} of {size} bytes)")
        return out


class StreamingWriter:
    """Writes planned tensors, in plan order, into shards of at most `max_shard_bytes` each.

    Use as a context manager; `write` must be called once per planned tensor, in order. Files appear
    as `model.safetensors` (one shard) or `model-0000i-of-0000n.safetensors` plus the index.
    """

    def __init__(self, folder: str | os.PathLike, plan: list[TensorInfo], max_shard_bytes: int = 2 << 30):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.plan = plan
        shards: list[list[TensorInfo]] = [[]]
        size = 0
        for info in plan:
            if shards[-1] and size + info.nbytes > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append(info)
            size += info.nbytes
        n = len(shards)
        self.shards = [(SINGLE if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors", s) for i, s in enumerate(shards)]
        self._i = 0
        self._shard = -1
        self._file = None
        self._left: list[TensorInfo] = []

    def __enter__(self) -> "StreamingWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._file:
            self._file.close()
        if exc_type is None:
            if self._i != len(self.plan):
                raise RuntimeError(f"merge wrote {self._i} of {len(self.plan)} planned tensors")
            if len(self.shards) > 1:
                weight_map = {t.name: fname for fname, s in self.shards for t in s}
                total = sum(t.nbytes for t in self.plan)
                (self.folder / INDEX).write_text(
                    json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
                )

    def _open_next(self) -> None:
        if self._file:
            self._file.close()
        self._shard += 1
        fname, infos = self.shards[self._shard]
        header: dict = {"__metadata__": {"format": "pt"}}
        off = 0
        for t in infos:
            header[t.name] = {"dtype": CODES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + t.nbytes]}
            off += t.nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # data must start 8-byte aligned
        self._file = open(self.folder / fname, "wb")
        self._file.write(struct.pack("<Q", len(blob)))
        self._file.write(blob)
        self._left = list(infos)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if not self._left:
            self._open_next()
        info = self._left.pop(0)
        if name != info.name or tuple(tensor.shape) != info.shape or tensor.dtype != info.dtype:
            raise RuntimeError(
                f"tensor {name} {tuple(tensor.shape)} {tensor.dtype} does not match the plan "
                f"({info.name} {info.shape} {info.dtype})"
            )
        data = tensor.detach().contiguous().cpu()
        if data.numel():
            self._file.write(memoryview(data.reshape(-1).view(torch.uint8).numpy()))
        self._i += 1
