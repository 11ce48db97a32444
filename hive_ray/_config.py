"""The ``hive up`` config file: settings, the pools to create, and the API switch."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hive_ray._errors import ConfigurationError
from hive_ray._models import PoolSpec


class ApiConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="Serve the HTTP and gRPC API from `hive up`.")


class HiveConfig(BaseModel):
    """A whole config file. Unknown keys are errors, with the path to the offending key."""

    model_config = ConfigDict(extra="forbid")
    settings: dict[str, Any] = Field(default_factory=dict)
    pools: list[PoolSpec] = Field(default_factory=list)
    api: ApiConfig = Field(default_factory=ApiConfig)


def default_config_text() -> str:
    return resources.files("hive_ray").joinpath("default_config.yaml").read_text()


def load_config(path: str | Path | None) -> HiveConfig:
    """Read and validate a config file (None: the packaged demo config)."""
    import yaml

    if path is None:
        text, where = default_config_text(), "the default config"
    else:
        try:
            text, where = Path(path).read_text(), str(path)
        except OSError as error:
            raise ConfigurationError(f"cannot read config file {path}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ConfigurationError(f"{where} is not valid YAML: {error}") from None
    try:
        return HiveConfig.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in error.errors()
        )
        raise ConfigurationError(f"{where} is invalid: {problems}") from None
