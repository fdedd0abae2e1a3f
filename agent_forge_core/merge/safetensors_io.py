"""Reading checkpoints with the safetensors library, and a streaming, sharded safetensors writer.

Reading: `safetensors.safe_open` memory-maps each file and `get_tensor` returns a view of the mapping, so
a tensor costs no copy; its pages come from the page cache when the merge first touches them. A mapping
keeps every page it has touched resident (and counted in RSS) while it lives, so a checkpoint keeps one
file open at a time and reopens it after `window_bytes` of tensors: its resident pages stay below window +
largest tensor, whatever the model size.

Writing is hand-written because the library has no streaming writer: `save_file` needs every tensor in
memory at once. The safetensors layout is an 8-byte little-endian header length N, N bytes of JSON header
(`name -> {dtype, shape, data_offsets: [begin, end]}`, plus `__metadata__`), then the raw tensor bytes;
the writer computes the header from the planned output shapes first, so each tensor is written as soon as
it is merged and then dropped.
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..errors import ModelLoadError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
CODES = {v: k for k, v in DTYPES.items()}
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
WINDOW_BYTES = 32 << 20  # measured: reopening costs ~0.3 ms, so a 538 MB model pays ~5 ms for it


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


def _open(path: Path):
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as e:
        raise ModelLoadError(f"{path}: not a valid safetensors file (truncated, or another format): re-create or "
                             f"re-download it ({e})") from None


class LazyCheckpoint:
    """The tensors of a HF folder (single or sharded safetensors), read one at a time on demand.

    `get` returns a view of a file's mapping (copy-on-write: writing to it never changes the file). At
    most one file is open at a time, reopened after `window_bytes` of tensors, so the mapped pages that
    count as resident stay below window + largest tensor, whatever the model size."""

    def __init__(self, folder: str | os.PathLike, window_bytes: int = WINDOW_BYTES):
        self.folder = Path(folder)
        self.window_bytes = window_bytes
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
        self._file: dict[str, Path] = {}
        self.infos: dict[str, TensorInfo] = {}
        for fname in files:
            path = self.folder / fname
            handle = _open(path)
            for name in handle.offset_keys():  # file order: reads run forward
                sl = handle.get_slice(name)
                if sl.get_dtype() not in DTYPES:
                    raise ModelLoadError(f"{path}: tensor {name} has dtype {sl.get_dtype()}, which merges do not "
                                         f"read; use one of {sorted(DTYPES)}")
                self._file[name] = path
                self.infos[name] = TensorInfo(name, DTYPES[sl.get_dtype()], tuple(sl.get_shape()))
        self._path: Path | None = None
        self._handle = None
        self._served = 0

    def names(self) -> list[str]:
        return list(self.infos)

    def get(self, name: str) -> torch.Tensor:
        path = self._file[name]
        if path != self._path or self._served >= self.window_bytes:
            self._handle = None  # drop the old mapping first; tensors still in use keep theirs alive
            self._handle, self._path, self._served = _open(path), path, 0
        t = self._handle.get_tensor(name)
        self._served += t.numel() * t.element_size()
        return t


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
