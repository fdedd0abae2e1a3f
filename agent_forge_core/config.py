"""Typed configuration: ForgeSettings.

Precedence, lowest to highest: field defaults (the `quick` profile) < profile values < YAML file <
environment (`AF_` prefix, `__` between nested keys) < `.env` < CLI `--set a.b=value`.
Everything is validated before any work starts; an invalid value raises `ConfigError` naming the field
path, the value given and what is allowed.
"""
from __future__ import annotations

import contextvars
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .errors import ConfigError
from .evals.tasks import TASK_NAMES

PIPELINE_ORDER = (
    "cognate",
    "evomerge",
    "quietstar",
    "bitnet",
    "loop",
    "baking",
    "experts",
    "compression",
)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSettings(Section):
    source: str = Field(
        "smollm2-135m-instruct",
        description="Local HF folder, GGUF file, hub id, or a built-in alias (see `agent-forge models`).",
    )
    gguf_file: str | None = Field(None, description="GGUF file name inside `source` when it is a folder.")
    trust_remote_code: bool = False
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = Field("auto", description="`auto` (cuda if available, else cpu), `cpu`, `cuda`, `cuda:1`...")


class StoreSettings(Section):
    url: str = Field(".forge/store", description="Local directory or s3://bucket/prefix.")
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto...).")
    key: SecretStr | None = Field(None, description="S3 access key id; falls back to the AWS_* environment.")
    secret: SecretStr | None = Field(None, description="S3 secret key; falls back to the AWS_* environment.")
    region: str | None = None
    credentials_block: str | None = Field(
        None, description="Name of a Prefect Secret block holding {\"key\": ..., \"secret\": ...}; loaded by the "
        "flow on the worker (an alternative to the worker's AWS_* environment).")
    cache_dir: str = Field(".forge/cache", description="Local copies of remote checkpoints.")


class EvalSettings(Section):
    tasks: list[str] = Field(default_factory=lambda: list(TASK_NAMES))
    n_examples: int = Field(32, gt=0, description="Examples per task on the scored split.")
    shots: int = Field(1, ge=0, description="In-context examples (from the train split) in each prompt.")
    ppl_tokens: int = Field(4096, gt=0, description="Tokens of held-out text for perplexity.")
    ppl_window: int = Field(256, gt=8)
    batch_size: int = Field(16, gt=0)
    max_new_tokens: int = Field(48, gt=0)
    seed: int = 1234
    data: dict[str, str] = Field(
        default_factory=dict, description="Bring your own data: task name -> JSONL file with prompt/answer rows."
    )

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, v: list[str]) -> list[str]:
        bad = [t for t in v if t not in TASK_NAMES]
        if bad:
            raise ValueError(f"unknown task(s) {bad}; allowed: {list(TASK_NAMES)}")
        return v


class StageSection(Section):
    """Section of a stage. Stages that are not built yet only have `enabled` (and refuse `true`)."""

    enabled: bool = False
    gates: dict[str, float] = Field(
        default_factory=dict,
        description="metric -> max allowed regression vs. the stage input (perplexity: relative, accuracies: absolute).",
    )


class ImportSettings(StageSection):
    enabled: bool = True


class LoraSettings(Section):
    r: int = Field(16, gt=0)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


class CognateSettings(StageSection):
    enabled: bool = True
    focuses: list[Literal["reasoning", "memory", "language", "instruction"]] = Field(
        default_factory=lambda: ["reasoning", "memory", "language"], min_length=1
    )
    lora: LoraSettings = Field(default_factory=LoraSettings)
    steps: int = Field(30, gt=0)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(8, gt=0)
    max_len: int = Field(256, gt=16, description="Tokens per training sequence.")
    warmup: int = Field(4, ge=0)
    seed: int = 0
    gates: dict[str, float] = Field(
        default_factory=lambda: {"perplexity": 0.5, "arithmetic": 0.25, "recall": 0.25, "instruction": 0.25}
    )

    @field_validator("focuses")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"focuses must be distinct, got {v}")
        return v


class BitnetSettings(StageSection):
    modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1, description="Linear layers to ternarize (name suffixes); lm_head and embeddings stay float.",
    )
    act_bits: int = Field(8, ge=2, le=8)
    norm: bool = Field(False, description="RMSNorm before activation quantization (the b1.58 SubLN).")
    packing: Literal["base3", "2bit"] = Field("base3", description="base3: 1.6 bits/weight; 2bit: faster unpacking.")
    schedule: Literal["linear", "exponential", "sigmoid", "none"] = "linear"
    warmup: int = Field(30, ge=0, description="Steps over which quantization is ramped in (lambda 0 -> 1).")
    steps: int = Field(60, gt=0, description="QAT steps (0 would be post-training ternarization).")
    lr: float = Field(2e-4, gt=0)
    lr_warmup: int = Field(5, ge=0)
    batch_size: int = Field(8, gt=0)
    max_len: int = Field(256, gt=16)
    data: list[Literal["reasoning", "memory", "language", "instruction"]] = Field(
        default_factory=lambda: ["language", "reasoning", "memory", "instruction"], min_length=1,
        description="Training mixture for QAT (the same generators as Cognate, train split).",
    )
    measure_ptq: bool = Field(True, description="Also evaluate plain post-training ternarization (no training).")
    seed: int = 0
    gates: dict[str, float] = Field(default_factory=lambda: {"perplexity": 20.0})

    @model_validator(mode="after")
    def _warmup_fits(self) -> "BitnetSettings":
        if self.warmup > self.steps:
            raise ValueError(
                f"warmup ({self.warmup}) must not exceed steps ({self.steps}): quantization would never reach "
                "full strength during training"
            )
        return self


class CandidateEvalSettings(Section):
    """The eval budget of each EvoMerge candidate (validation split); the winner gets the full suite."""

    n_examples: int = Field(16, gt=0, description="Examples per task for a candidate's fitness.")
    ppl_tokens: int = Field(2048, gt=0, description="Held-out (validation) tokens for a candidate's perplexity.")


class EvoMergeSettings(StageSection):
    enabled: bool = True
    methods: list[str] = Field(
        default_factory=lambda: ["task_arithmetic", "ties", "dare_ties", "linear"], min_length=1,
        description="Merge methods the search may choose (one gene each; the largest wins).",
    )
    bands: int = Field(1, ge=1, le=8, description="Layer bands: per-model weights/densities may differ per band (a mergekit gradient).")
    weight_bounds: tuple[float, float] = Field((0.0, 1.2), description="Range of each model's weight.")
    density_bounds: tuple[float, float] = Field((0.2, 1.0), description="Range of TIES/DARE densities.")
    lambda_bounds: tuple[float, float] = Field((0.6, 1.6), description="Range of the task-vector scale lambda.")
    population: int = Field(6, ge=2, description="Candidates per CMA-ES generation.")
    generations: int = Field(3, ge=1)
    sigma: float = Field(0.25, gt=0, le=1, description="Initial CMA-ES step size in the unit cube of genes.")
    seed: int = 0
    slots: int | None = Field(
        None, ge=1, description="Candidate evaluations running at once; default: the number of GPUs (1 on CPU)."
    )
    fitness: dict[str, float] = Field(
        default_factory=lambda: {"arithmetic": 1.0, "recall": 1.0, "instruction": 1.0, "perplexity": 1.0,
                                 "arithmetic_nll": 0.25, "recall_nll": 0.25, "instruction_nll": 0.25},
        description="Combined score = sum of weight * term; term = accuracy, -ln(perplexity) or -NLL.",
    )
    candidate_eval: CandidateEvalSettings = Field(default_factory=CandidateEvalSettings)
    executor: Literal["local", "deployment"] = Field(
        "local", description="local: candidates are Prefect tasks in the flow's process; deployment: each is a "
        "run of the `evaluate-candidate` deployment on a work pool (needs a Prefect server and a shared store).",
    )
    deployment: str = Field("evaluate-candidate/evaluate-candidate", description="flow/deployment name used by `deployment`.")
    run_timeout_s: float = Field(3600.0, gt=0, description="A candidate run still running this long after it "
                                 "started is cancelled (time queued for a worker does not count).")
    run_retries: int = Field(1, ge=0, description="New runs for a candidate whose run crashed, failed or timed out "
                             "(a candidate that merely scores badly is never retried).")
    poll_s: float = Field(2.0, gt=0, description="How often the states of candidate runs are polled.")
    gates: dict[str, float] = Field(default_factory=lambda: {"perplexity": 0.5})

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v: list[str]) -> list[str]:
        allowed = ["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties"]
        bad = [m for m in v if m not in allowed]
        if bad or len(set(v)) != len(v):
            raise ValueError(f"methods must be distinct names from {allowed} (searchable over N models), got {v}")
        return v

    @field_validator("weight_bounds", "density_bounds", "lambda_bounds")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not v[0] < v[1]:
            raise ValueError(f"bounds must be (low, high) with low < high, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _fitness_metrics(self) -> "EvoMergeSettings":
        known = set(TASK_NAMES) | {f"{t}_nll" for t in TASK_NAMES} | {"perplexity"}
        bad = [m for m in self.fitness if m not in known]
        if bad or not self.fitness:
            raise ValueError(f"fitness names unknown metrics {bad}; allowed: {sorted(known)}")
        return self


class DeploySettings(Section):
    """How `agent-forge deploy` registers the deployments of `deployments/prefect.yaml`."""

    nightly: bool = Field(False, description="Whether the forge deployment's nightly schedule is active (the off-switch).")
    cron: str = Field("0 2 * * *", description="The nightly schedule (cron).")
    timezone: str = Field("UTC", description="IANA time zone of the cron schedule, e.g. Europe/Berlin.")
    gpu_concurrency: int | None = Field(
        None, ge=1, description="Concurrency limit of the gpu pool; default: the GPUs visible where `deploy` runs (1 without).")
    cpu_concurrency: int = Field(1, ge=1, description="Concurrency limit of the cpu pool (forge runs at once).")

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        if len(v.split()) != 5:
            raise ValueError("cron must have five fields (minute hour day month weekday), e.g. '0 2 * * *'")
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown time zone; use an IANA name such as UTC or Europe/Berlin") from None
        return v


class CompressionRule(Section):
    pattern: str = Field(description="fnmatch glob over tensor names, e.g. '*.mlp.*_proj.weight'; the first match wins.")
    codec: Literal["seedlm", "vptq", "hyper", "rtn", "auto", "keep"]
    params: dict[str, Any] = Field(default_factory=dict, description="The codec's parameters (see its docstring).")


class AutoCandidate(Section):
    codec: Literal["seedlm", "vptq", "hyper", "rtn"]
    params: dict[str, Any] = Field(default_factory=dict)


class CompressionSettings(StageSection):
    rules: list[CompressionRule] = Field(
        default_factory=lambda: [
            CompressionRule(pattern="*_proj.weight", codec="auto"),
            CompressionRule(pattern="*embed_tokens.weight", codec="rtn", params={"bits": 8, "group": 64}),
            CompressionRule(pattern="*", codec="keep"),
        ],
        min_length=1, description="Tensor-name pattern -> codec (first match); tensors that match none are kept.",
    )
    auto_candidates: list[AutoCandidate] = Field(
        default_factory=lambda: [
            AutoCandidate(codec="vptq", params={"v": 4, "k": 256}),
            AutoCandidate(codec="vptq", params={"v": 4, "k": 256, "residual_k": 16}),
            AutoCandidate(codec="hyper", params={"n": 256, "spacing": "geometric"}),
            AutoCandidate(codec="rtn", params={"bits": 6, "group": 64}),
        ],
        min_length=1, description="What `auto` tries on each tensor (each one encodes it: cost adds up).",
    )
    error_budget: float = Field(0.05, gt=0, description="auto: largest relative (Hessian-weighted) error a tensor may get.")
    target_bpw: float | None = Field(4.5, gt=0, description="auto: model-wide bits per weight to meet (all tensors counted).")
    keep_dtype: Literal["float16", "float32"] = Field("float16", description="How kept tensors (norms...) are stored.")
    calibration_tokens: int = Field(4096, ge=0, description="Held-in text tokens for the Hessians (0: no Hessian).")
    calibration_len: int = Field(256, gt=8)
    seed: int = 0
    gates: dict[str, float] = Field(default_factory=lambda: {"perplexity": 1.0})

    @model_validator(mode="after")
    def _codec_params(self) -> "CompressionSettings":
        from .compression.codecs import get_codec

        for r in [*self.rules, *self.auto_candidates]:
            if r.codec not in ("auto", "keep"):
                get_codec(r.codec, **r.params)  # unknown or invalid parameters fail here, before any work
        return self


# `full` profile: GPU-sized budgets. `quick` is the field defaults (CPU, minutes).
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {},
    "full": {
        "eval": {"n_examples": 200, "shots": 2, "ppl_tokens": 32768, "ppl_window": 1024, "batch_size": 32},
        "bitnet": {"steps": 1000, "warmup": 300, "batch_size": 16, "max_len": 512},
        "evomerge": {"population": 12, "generations": 10, "candidate_eval": {"n_examples": 100, "ppl_tokens": 16384}},
        "cognate": {"steps": 600, "batch_size": 16, "max_len": 512, "warmup": 30, "lora": {"r": 32, "alpha": 64}},
    },
}

_LAYERS: contextvars.ContextVar[tuple[dict, dict]] = contextvars.ContextVar("_LAYERS", default=({}, {}))


class _DictSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]):
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field, field_name):  # pragma: no cover - __call__ is used instead
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._data


class ForgeSettings(BaseSettings):
    # extra="ignore": the same `.env` may hold Prefect's (PREFECT_*) and other tools' keys.
    model_config = SettingsConfigDict(
        env_prefix="AF_", env_nested_delimiter="__", env_file=".env", extra="ignore", validate_assignment=True
    )

    profile: Literal["quick", "full"] = "quick"
    run_name: str = "forge"
    work_dir: str = Field(".forge/work", description="Scratch space for models being built.")
    model: ModelSettings = Field(default_factory=ModelSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    import_: ImportSettings = Field(default_factory=ImportSettings, alias="import")
    cognate: CognateSettings = Field(default_factory=CognateSettings)
    evomerge: EvoMergeSettings = Field(default_factory=EvoMergeSettings)
    quietstar: StageSection = Field(default_factory=StageSection)
    bitnet: BitnetSettings = Field(default_factory=BitnetSettings)
    loop: StageSection = Field(default_factory=StageSection)
    baking: StageSection = Field(default_factory=StageSection)
    experts: StageSection = Field(default_factory=StageSection)
    compression: CompressionSettings = Field(default_factory=CompressionSettings)
    deploy: DeploySettings = Field(default_factory=DeploySettings)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        yaml_layer, profile_layer = _LAYERS.get()
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            _DictSource(settings_cls, yaml_layer),
            _DictSource(settings_cls, profile_layer),
            file_secret_settings,
        )

    def section(self, stage: str) -> StageSection:
        return self.import_ if stage == "import" else getattr(self, stage)

    def public_dict(self) -> dict[str, Any]:
        """The effective config as plain data, secrets masked."""
        return json.loads(self.model_dump_json(by_alias=True))

    def portable_dict(self) -> dict[str, Any]:
        """The effective config for another process or machine (a deployment run's parameter).

        Credentials are left out, not masked: Prefect masks SecretStr parameters, so the receiver takes
        them from its own environment (AF_STORE__KEY/SECRET or AWS_*). A local store path is made
        absolute, since the receiver's working directory differs."""
        data = json.loads(self.model_dump_json(by_alias=True, exclude={"store": {"key", "secret"}}))
        if "://" not in self.store.url:
            data["store"]["url"] = str(Path(self.store.url).expanduser().resolve())
        return data

    @classmethod
    def from_portable(cls, data: dict[str, Any]) -> "ForgeSettings":
        """Inverse of `portable_dict`; credentials come from this process's environment."""
        try:
            return cls(**data)
        except ValidationError as e:
            raise ConfigError(_format_validation_error(e)) from None


def _top_level_keys() -> dict[str, str]:
    keys = {}
    for name, f in ForgeSettings.model_fields.items():
        keys[f.alias or name] = name
    return keys


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`a.b.c=value` strings -> nested dict; values are parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value (e.g. cognate.steps=20)")
        path, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value {raw!r} is not valid YAML: {e}") from None
        parts = [p for p in path.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"override {item!r} names no setting")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {p!r}")
        node[parts[-1]] = value
    return out


def read_yaml(path: str | os.PathLike | None) -> dict[str, Any]:
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist; pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections, got {type(data).__name__}")
    return data


def _check_top_level(data: dict[str, Any], origin: str) -> None:
    allowed = _top_level_keys()
    for k in data:
        if k not in allowed:
            raise ConfigError(f"{origin}: unknown section {k!r}; allowed: {sorted(allowed)}")


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]).replace("import_", "import")
        if e["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown setting (value {e['input']!r}); check the name against `agent-forge config show`")
        else:
            lines.append(f"{loc}: got {e['input']!r}: {e['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings(
    config_path: str | os.PathLike | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    profile: str | None = None,
) -> ForgeSettings:
    yaml_data = read_yaml(config_path)
    _check_top_level(yaml_data, f"config file {str(config_path)!r}")
    cli = parse_overrides(overrides)
    _check_top_level(cli, "--set")
    # The profile picks a layer of defaults, so it is resolved first, with the same precedence as any
    # setting (the --profile flag counts as CLI), then pinned so no lower layer can contradict it.
    chosen = cli.get("profile") or profile or os.environ.get("AF_PROFILE") or yaml_data.get("profile") or "quick"
    if chosen not in PROFILES:
        raise ConfigError(f"profile: got {chosen!r}: allowed profiles are {sorted(PROFILES)}")
    token = _LAYERS.set((yaml_data, {**PROFILES[chosen], "profile": chosen}))
    try:
        return ForgeSettings(**{**cli, "profile": chosen})
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e)) from None
    finally:
        _LAYERS.reset(token)


def config_hash(data: Any) -> str:
    """Stable sha256 of a JSON-able value (sorted keys)."""
    import hashlib

    if isinstance(data, BaseModel):
        data = json.loads(data.model_dump_json(by_alias=True))
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
