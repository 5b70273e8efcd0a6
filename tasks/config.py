"""The one configuration file (TOML), validated with pydantic and parsed once at the edge."""

from __future__ import annotations

import codecs
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

TOKEN_ENV = "LIGHTSPEED_TOKEN"
BASE_URL_ENV = "LIGHTSPEED_BASE_URL"
MAX_QUANTITY = 2_147_483_647


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _relative_to_config(value: str, info: ValidationInfo) -> str:
    """Resolve a path or glob written in the config against the config file's folder."""
    base = (info.context or {}).get("base_dir")
    if base is None or Path(value).expanduser().is_absolute():
        return str(Path(value).expanduser())
    return str(Path(base) / value)


class LightspeedSettings(_Section):
    base_url: str = Field(description="API root, e.g. https://lsapi-product.lightspeedapp.com")
    token_secret: str | None = Field(
        None, description="Prefect Secret block holding the token; else $LIGHTSPEED_TOKEN"
    )
    chunk_size: int = Field(500, ge=1, le=100_000, description="products per PUT /inventory")
    max_concurrency: int = Field(4, ge=1, le=64, description="chunks in flight at once")
    per_page: int = Field(250, ge=1, le=10_000, description="products per catalog page")
    timeout_seconds: float = Field(30.0, gt=0, description="per HTTP request")
    retries: int = Field(5, ge=0, le=20, description="retries of a chunk on a transient error")
    retry_backoff_seconds: float = Field(
        2.0, ge=0, description="first retry delay; doubles on each further retry, with jitter"
    )
    max_retry_after_seconds: float = Field(
        120.0, ge=0, description="longest Retry-After honoured before failing the attempt"
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {value!r}")
        return value.rstrip("/")


class CatalogSettings(_Section):
    source: Literal["api", "file"] = "api"
    path: str | None = Field(None, description="CSV: vendorSku,id,isInventoryTrackingEnabled,...")
    absent: Literal["zero", "keep"] = Field(
        "zero", description="tracked products no warehouse lists: push 0, or leave alone"
    )

    _resolve = field_validator("path")(_relative_to_config)

    @model_validator(mode="after")
    def _file_needs_path(self) -> CatalogSettings:
        if self.source == "file" and not self.path:
            raise ValueError('source = "file" needs path = "<catalog CSV>"')
        return self


class WarehouseBase(_Section):
    name: str = Field(min_length=1, description="shown in the summary and in every error")
    sku_column: str = Field(min_length=1)
    quantity_column: str = Field(min_length=1)
    safety_stock: int = Field(0, ge=0, description="units held back per SKU in this warehouse")
    allow_empty: bool = Field(
        False, description="accept a feed with a header but no rows (else the run fails)"
    )


class CsvWarehouse(WarehouseBase):
    kind: Literal["csv"]
    path: str = Field(description="file or glob; a glob picks the newest matching file")
    delimiter: str = Field(",", min_length=1, max_length=1)
    encoding: str = "utf-8"

    _resolve = field_validator("path")(_relative_to_config)

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            return codecs.lookup(value).name
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}") from None


class ParquetWarehouse(WarehouseBase):
    kind: Literal["parquet"]
    path: str = Field(description="file or glob; a glob picks the newest matching file")

    _resolve = field_validator("path")(_relative_to_config)


Warehouse = Annotated[CsvWarehouse | ParquetWarehouse, Field(discriminator="kind")]
WAREHOUSE_KINDS = ("csv", "parquet")


class ReportSettings(_Section):
    dir: str = Field(
        "reports", validate_default=True, description="where each run writes its quarantine CSV"
    )
    max_artifact_rows: int = Field(500, ge=1, description="quarantined rows shown in the UI")

    _resolve = field_validator("dir")(_relative_to_config)


class Settings(_Section):
    lightspeed: LightspeedSettings
    catalog: CatalogSettings = CatalogSettings()
    warehouses: list[Warehouse] = Field(min_length=1)
    report: ReportSettings = Field(default_factory=lambda: ReportSettings())

    @field_validator("warehouses")
    @classmethod
    def _unique_names(cls, value: list[Any]) -> list[Any]:
        names = [w.name for w in value]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"warehouse names must be unique; repeated: {', '.join(repeated)}")
        return value


def load_settings(path: str | Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the TOML file; relative paths are taken from the file's folder."""
    environ = os.environ if environ is None else environ
    path = Path(path).expanduser().resolve()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    if environ.get(BASE_URL_ENV):
        data.setdefault("lightspeed", {})["base_url"] = environ[BASE_URL_ENV]
    data.setdefault("report", {})  # so its default folder is resolved against the config's
    try:
        return Settings.model_validate(data, context={"base_dir": str(path.parent)})
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid configuration:\n{describe_errors(exc, data)}") from None


def apply_run_options(
    settings: Settings, warehouses: list[str] | None, chunk_size: int | None
) -> Settings:
    """Narrow a run to some warehouses and/or override the chunk size, from flow parameters.

    A run over a subset of warehouses cannot know that a product is in no warehouse, so it
    never zeroes absent products: it leaves them alone.
    """
    if warehouses:
        known = {w.name for w in settings.warehouses}
        unknown = [name for name in warehouses if name not in known]
        if unknown:
            raise ConfigError(
                f"warehouses parameter: no warehouse named {', '.join(map(repr, unknown))}; "
                f"the configuration has {', '.join(map(repr, sorted(known)))}"
            )
        chosen = [w for w in settings.warehouses if w.name in warehouses]
        settings = settings.model_copy(
            update={
                "warehouses": chosen,
                "catalog": settings.catalog.model_copy(update={"absent": "keep"}),
            }
        )
    if chunk_size:
        lightspeed = settings.lightspeed.model_copy(update={"chunk_size": chunk_size})
        settings = settings.model_copy(update={"lightspeed": lightspeed})
    return settings


def describe_errors(exc: ValidationError, data: Mapping[str, Any]) -> str:
    """One line per problem, naming the key as a user wrote it (warehouses by name too)."""
    lines = []
    for error in exc.errors():
        loc = list(error["loc"])
        parts: list[str] = []
        for i, item in enumerate(loc):
            if isinstance(item, int):
                parts[-1] += f"[{item}]"
                if loc[:i] == ["warehouses"]:
                    name = _warehouse_name(data, item)
                    if name:
                        parts[-1] += f' (name = "{name}")'
            elif i > 0 and loc[i - 1] != "warehouses" and item in WAREHOUSE_KINDS and i == 2:
                continue  # pydantic's tag for the discriminated union, not a key the user wrote
            else:
                parts.append(str(item))
        key = ".".join(parts) or "(top level)"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key (check its spelling)"
        elif error["type"] == "union_tag_invalid":
            message = f"kind must be one of {', '.join(WAREHOUSE_KINDS)}"
        elif error["type"] == "union_tag_not_found":
            message = f"missing kind (one of {', '.join(WAREHOUSE_KINDS)})"
        lines.append(f"  - {key}: {message}")
    return "\n".join(lines)


def _warehouse_name(data: Mapping[str, Any], index: int) -> str | None:
    warehouses = data.get("warehouses")
    if isinstance(warehouses, list) and index < len(warehouses):
        entry = warehouses[index]
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            return entry["name"]
    return None


def resolve_token(
    settings: LightspeedSettings, environ: Mapping[str, str] | None = None
) -> SecretStr:
    """The API token, from the named Prefect Secret block or else $LIGHTSPEED_TOKEN; never logged."""
    environ = os.environ if environ is None else environ
    if settings.token_secret:
        from prefect.blocks.system import Secret

        try:
            block = cast(Secret[str], Secret.load(settings.token_secret))
            value = block.get()
        except Exception as exc:
            raise ConfigError(
                f"lightspeed.token_secret: cannot load Prefect Secret block "
                f"{settings.token_secret!r}: {type(exc).__name__}"
            ) from None
        return SecretStr(str(value))
    token = environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ConfigError(
            f"no API token: set {TOKEN_ENV} in the environment, or name a Prefect Secret block "
            "in lightspeed.token_secret"
        )
    return SecretStr(token)
