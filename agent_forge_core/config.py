"""Typed configuration: ForgeSettings, assembled from the stage registry.

The common sections (model, store, eval, deploy) are declared here; every stage contributes its own
section, the settings class it registered with (`StageSpec.settings`, kept beside the stage's code), so a
new stage adds no line to this file. A stage that is not built yet has a bare section that only knows
`enabled`.

Precedence, lowest to highest: field defaults (the `quick` profile) < profile values (each section's
`profiles`) < YAML file < environment (`AF_` prefix, `__` between nested keys) < `.env` < CLI
`--set a.b=value`. Everything is validated before any work starts; an invalid value raises
`ConfigError` naming the field path, the value given and what is allowed.
"""
from __future__ import annotations

import contextvars
import json
import keyword
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, SecretStr, ValidationError, create_model, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from .agent.settings import AgentSettings
from .errors import ConfigError
from .evals.settings import EvalSettings
from .settings_base import PROFILE_NAMES, Section, StageSection
from .stages import registry


class ModelSettings(Section):
    source: str = Field(
        "smollm2-135m-instruct",
        description="Local HF folder, GGUF file, hub id, or a built-in alias (see `agent-forge models`).",
    )
    gguf_file: str | None = Field(None, description="GGUF file name inside `source` when it is a folder.")
    trust_remote_code: bool = False
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


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


_LAYERS: contextvars.ContextVar[tuple[dict, dict]] = contextvars.ContextVar("_LAYERS", default=({}, {}))


class _DictSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]):
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field, field_name):  # pragma: no cover - __call__ is used instead
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._data


def section_field(stage: str) -> str:
    """The attribute of a stage's section (`import` is a Python keyword: `import_`, alias `import`)."""
    return stage + "_" if keyword.iskeyword(stage) else stage


class ForgeSettings(BaseSettings):
    """The common sections; `settings_class()` adds one section per stage of the registry."""

    # extra="ignore": the same `.env` may hold Prefect's (PREFECT_*) and other tools' keys.
    model_config = SettingsConfigDict(
        env_prefix="AF_", env_nested_delimiter="__", env_file=".env", extra="ignore", validate_assignment=True
    )

    profile: Literal["quick", "full"] = "quick"
    run_name: str = "forge"
    # Runtime, never part of a checkpoint key: where this process works and computes.
    work_dir: str = Field(".forge/work", description="Scratch space for models being built.")
    device: str = Field("auto", description="`auto` (cuda if available, else cpu), `cpu`, `cuda`, `cuda:1`...")
    model: ModelSettings = Field(default_factory=ModelSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    deploy: DeploySettings = Field(default_factory=DeploySettings)
    agent: AgentSettings = Field(default_factory=AgentSettings)

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
        return getattr(self, section_field(stage))

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
            return settings_class()(**data)
        except ValidationError as e:
            raise ConfigError(_format_validation_error(e)) from None


_CLASSES: dict[tuple, type[ForgeSettings]] = {}


def settings_class() -> type[ForgeSettings]:
    """ForgeSettings with one section per stage of the registry's pipeline (built once per pipeline)."""
    pipeline = registry.pipeline()
    if pipeline not in _CLASSES:
        fields: dict[str, Any] = {}
        for entry in pipeline:
            name, cls = (entry, StageSection) if isinstance(entry, str) else (entry.name, entry.settings)
            field = section_field(name)
            fields[field] = (cls, Field(default_factory=cls, alias=name if field != name else None))
        _CLASSES[pipeline] = create_model("ForgeSettings", __base__=ForgeSettings, **fields)
    return _CLASSES[pipeline]


def profile_layer(profile: str) -> dict[str, Any]:
    """What a profile sets, gathered from every section's `profiles`."""
    layer: dict[str, Any] = {}
    for name, f in settings_class().model_fields.items():
        if isinstance(f.annotation, type) and issubclass(f.annotation, Section) and profile in f.annotation.profiles:
            layer[f.alias or name] = f.annotation.profiles[profile]
    return layer


def _top_level_keys() -> dict[str, str]:
    return {f.alias or name: name for name, f in settings_class().model_fields.items()}


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


def to_overrides(data: dict[str, Any], prefix: str = "") -> list[str]:
    """A nested mapping (a YAML config) as `a.b=value` overrides; the inverse of `parse_overrides`."""
    out = []
    for k, v in data.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out += to_overrides(v, path + ".")
        else:
            text = yaml.safe_dump(v, default_flow_style=True, width=10**9).strip()
            out.append(f"{path}={text.removesuffix('...').strip()}")
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


def _moved_hint(loc: tuple) -> str:
    """Where an unknown setting lives now, if it is a field of the section's runtime part or top level."""
    cls: Any = settings_class()
    for part in loc[:-1]:
        f = next((f for n, f in cls.model_fields.items() if part in (n, f.alias)), None)
        if f is None or not (isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)):
            return ""
        cls = f.annotation
    name = loc[-1]
    runtime = cls.model_fields.get("runtime")
    if runtime is not None and name in runtime.annotation.model_fields:
        return f"; it is a runtime setting now: {'.'.join(map(str, loc[:-1]))}.runtime.{name}"
    if len(loc) > 1 and name in ForgeSettings.model_fields:
        return f"; it is a top-level setting now: {name}"
    return ""


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(str(x).replace("import_", "import") for x in e["loc"])
        path = ".".join(loc)
        if e["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown setting (value {e['input']!r}){_moved_hint(loc)}; check the name against "
                         "`agent-forge config show`")
        else:
            lines.append(f"{path}: got {e['input']!r}: {e['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _format_settings_error(err: SettingsError) -> str:
    """pydantic-settings could not parse an environment value (a section or list given as plain text)."""
    m = re.search(r'field "([^"]+)" from source "(\w+)"', str(err))
    field, source = (m.group(1), m.group(2)) if m else ("?", "?")
    where = {"EnvSettingsSource": "the environment", "DotEnvSettingsSource": ".env"}.get(source, source)
    names = sorted(k for k in os.environ if k.upper() == f"AF_{field}".upper() or k.upper().startswith(f"AF_{field}__".upper()))
    return (f"{where}: the value of {', '.join(names) or 'AF_' + field.upper()} is not valid for section {field!r}: a "
            "section or a list given as one variable must be JSON (e.g. AF_EVAL__TASKS='[\"arithmetic\"]'); or set "
            f"one key per variable (e.g. AF_{field.upper()}__<KEY>=value)")


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
    if chosen not in PROFILE_NAMES:
        raise ConfigError(f"profile: got {chosen!r}: allowed profiles are {sorted(PROFILE_NAMES)}")
    token = _LAYERS.set((yaml_data, {**profile_layer(chosen), "profile": chosen}))
    try:
        return settings_class()(**{**cli, "profile": chosen})
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e)) from None
    except SettingsError as e:
        raise ConfigError(_format_settings_error(e)) from None
    finally:
        _LAYERS.reset(token)
