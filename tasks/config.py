"""The one configuration file (TOML), validated with pydantic and parsed once at the edge."""

from __future__ import annotations

import codecs
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, cast

from pydantic import (
    BaseModel,
    BeforeValidator,
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


def _http_url(value: str) -> str:
    """An http(s) root URL, without a trailing slash."""
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"must start with http:// or https://, got {value!r}")
    return value.rstrip("/")


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

    _url = field_validator("base_url")(_http_url)


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


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_duration(value: Any) -> Any:
    """Accept 90 (seconds), "90s", "15m", "2h", "1d", or anything pydantic reads as a timedelta."""
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return timedelta(seconds=float(match[1]) * _UNIT_SECONDS[match[2]])
    return value


Duration = Annotated[timedelta, BeforeValidator(_parse_duration)]


class WarehouseBase(_Section):
    name: str = Field(min_length=1, description="shown in the summary and in every error")
    sku_column: str = Field(min_length=1)
    quantity_column: str = Field(min_length=1)
    safety_stock: int = Field(0, ge=0, description="units held back per SKU in this warehouse")
    allow_empty: bool = Field(
        False, description="accept a feed with a header but no rows (else the run fails)"
    )
    max_age: Duration | None = Field(
        None, description='a feed older than this is stale, e.g. "2h" (default: no limit)'
    )
    timestamp_column: str | None = Field(
        None, description="feed age from the newest timestamp in this column, not the file time"
    )
    on_stale: Literal["fail", "use_last_good"] = Field(
        "fail", description="a stale feed fails the run, or the last good snapshot is used"
    )


class CsvOptions(_Section):
    delimiter: str = Field(",", min_length=1, max_length=1)
    encoding: str = "utf-8"

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            return codecs.lookup(value).name
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}") from None


class CsvWarehouse(WarehouseBase, CsvOptions):
    kind: Literal["csv"]
    path: str = Field(description="file or glob; a glob picks the newest matching file")

    _resolve = field_validator("path")(_relative_to_config)


class ParquetWarehouse(WarehouseBase):
    kind: Literal["parquet"]
    path: str = Field(description="file or glob; a glob picks the newest matching file")

    _resolve = field_validator("path")(_relative_to_config)


SECRET_SHAPE = 'write { env = "VARIABLE" } or { secret = "prefect-secret-block" }'


class SecretRef(_Section):
    """Where a secret lives: an environment variable or a Prefect Secret block, never the file."""

    env: str | None = Field(None, min_length=1, description="environment variable")
    secret: str | None = Field(None, min_length=1, description="Prefect Secret block name")

    @model_validator(mode="before")
    @classmethod
    def _not_inline(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError(SECRET_SHAPE + "; a secret is never written in the file")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.secret is None):
            raise ValueError(SECRET_SHAPE)
        return self


class RemoteWarehouse(WarehouseBase):
    timeout_seconds: float = Field(30.0, gt=0, description="connect / per-request timeout")
    retries: int = Field(3, ge=0, le=20, description="extract retries after a transient error")
    retry_backoff_seconds: float = Field(
        2.0, ge=0, description="first retry delay; doubles on each further retry, with jitter"
    )

    def secret_refs(self) -> dict[str, SecretRef]:
        """The secrets this warehouse needs, by config key."""
        return {key: value for key, value in self if isinstance(value, SecretRef)}


class SftpWarehouse(RemoteWarehouse, CsvOptions):
    kind: Literal["sftp"]
    host: str = Field(min_length=1)
    port: int = Field(22, ge=1, le=65535)
    user: str = Field(min_length=1)
    password: SecretRef | None = None
    private_key: SecretRef | None = Field(None, description="the key itself (OpenSSH/PEM text)")
    passphrase: SecretRef | None = Field(None, description="for an encrypted private_key")
    known_hosts: str | None = Field(None, description="known_hosts file listing the server's key")
    host_key: str | None = Field(None, description='the server\'s key: "ssh-ed25519 AAAA..."')
    path: str = Field(min_length=1, description="remote file or glob; the newest match is read")
    archive_dir: str | None = Field(
        None, min_length=1, description="remote folder the file moves to after a successful run"
    )

    _resolve = field_validator("known_hosts")(_relative_to_config)

    @field_validator("host_key")
    @classmethod
    def _public_key(cls, value: str | None) -> str | None:
        import asyncssh

        if value is None:
            return None
        try:
            asyncssh.import_public_key(value)
        except (asyncssh.KeyImportError, ValueError):
            raise ValueError(
                'not an SSH public key; write it as ssh-keyscan prints it, "ssh-ed25519 AAAA..."'
            ) from None
        return value.strip()

    @model_validator(mode="after")
    def _verified_login(self) -> SftpWarehouse:
        if (self.known_hosts is None) == (self.host_key is None):
            raise ValueError(
                "give exactly one of known_hosts (a file) or host_key (the server's public key); "
                "the server's host key is always verified"
            )
        if self.password is None and self.private_key is None:
            raise ValueError("give password or private_key (or both)")
        if self.passphrase is not None and self.private_key is None:
            raise ValueError("passphrase is for an encrypted private_key; private_key is missing")
        return self


class HttpWarehouse(RemoteWarehouse):
    kind: Literal["http"]
    base_url: str = Field(description="the WMS API root, e.g. https://wms.example.com/api")
    path: str = Field("", description="the stock endpoint, relative to base_url")
    params: dict[str, str] = Field(default_factory=dict, description="extra query parameters")
    auth_header: str = Field("Authorization", min_length=1)
    auth_value: SecretRef | None = Field(None, description='the whole value, e.g. "Bearer abc"')
    records_path: str = Field("", description='dotted path to each page\'s records; "" = the body')
    pagination: Literal["none", "page", "cursor", "next"] = "none"
    page_param: str = Field("page", min_length=1)
    first_page: int = Field(1, ge=0)
    page_size_param: str | None = Field(None, min_length=1)
    page_size: int | None = Field(None, ge=1)
    cursor_param: str = Field("cursor", min_length=1)
    cursor_path: str | None = Field(None, min_length=1, description="dotted path to next cursor")
    next_path: str = Field("next", min_length=1, description="dotted path to the next page's URL")

    _url = field_validator("base_url")(_http_url)

    @model_validator(mode="after")
    def _pagination_keys(self) -> HttpWarehouse:
        if self.pagination == "cursor" and not self.cursor_path:
            raise ValueError('pagination = "cursor" needs cursor_path = "<dotted path>"')
        if (self.page_size is None) != (self.page_size_param is None):
            raise ValueError("page_size and page_size_param go together")
        return self


class SqlWarehouse(RemoteWarehouse):
    kind: Literal["sql"]
    url: SecretRef = Field(description="SQLAlchemy URL, e.g. postgresql://user:pw@host/db")
    query: str = Field(min_length=1, description="returns the SKU and quantity columns")


Warehouse = Annotated[
    CsvWarehouse | ParquetWarehouse | SftpWarehouse | HttpWarehouse | SqlWarehouse,
    Field(discriminator="kind"),
]
WAREHOUSE_KINDS = ("csv", "parquet", "sftp", "http", "sql")


class ReportSettings(_Section):
    dir: str = Field(
        "reports", validate_default=True, description="where each run writes its quarantine CSV"
    )
    max_artifact_rows: int = Field(500, ge=1, description="quarantined rows shown in the UI")

    _resolve = field_validator("dir")(_relative_to_config)


class StateSettings(_Section):
    dir: str = Field(
        "state", validate_default=True, description="where the last pushed quantities are kept"
    )

    _resolve = field_validator("dir")(_relative_to_config)


class GuardSettings(_Section):
    max_zeroed_share: float = Field(
        0.2, ge=0, le=1, description="share of in-stock products a run may take to zero unasked"
    )
    max_units_drop_share: float = Field(
        0.5, ge=0, le=1, description="share of total available units a run may remove unasked"
    )
    approval_timeout_seconds: int = Field(
        3600, ge=1, description="how long a paused run waits for approval before it fails"
    )
    read_back: bool = Field(True, description="after the load, read quantities back for drift")


class Settings(_Section):
    lightspeed: LightspeedSettings
    catalog: CatalogSettings = CatalogSettings()
    warehouses: list[Warehouse] = Field(min_length=1)
    report: ReportSettings = Field(default_factory=lambda: ReportSettings())
    state: StateSettings = Field(default_factory=lambda: StateSettings())
    guards: GuardSettings = Field(default_factory=lambda: GuardSettings())

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
    if not str(path).strip():
        raise ConfigError(
            "config_path is empty: give the configuration file (deployments read it from "
            "$INVENTORY_SYNC_CONFIG when they are registered)"
        )
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
    for section in ("report", "state"):
        data.setdefault(section, {})  # so its default folder is resolved against the config's
    try:
        return Settings.model_validate(data, context={"base_dir": str(path.parent)})
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid configuration:\n{describe_errors(exc, data)}") from None


def apply_run_options(settings: Settings, chunk_size: int | None) -> Settings:
    """The settings for one run, with a chunk-size override from the flow parameters."""
    if not chunk_size:
        return settings
    lightspeed = settings.lightspeed.model_copy(update={"chunk_size": chunk_size})
    return settings.model_copy(update={"lightspeed": lightspeed})


def select_warehouses(settings: Settings, names: Sequence[str] | None) -> list[Warehouse]:
    """The warehouses to read this run: all, or the named ones (an unknown name is an error)."""
    if not names:
        return list(settings.warehouses)
    known = {w.name for w in settings.warehouses}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(
            f"warehouses parameter: no warehouse named {', '.join(map(repr, unknown))}; "
            f"the configuration has {', '.join(map(repr, sorted(known)))}"
        )
    return [w for w in settings.warehouses if w.name in names]


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


def resolve_secrets(
    warehouses: Sequence[Any], environ: Mapping[str, str] | None = None
) -> dict[str, dict[str, SecretStr]]:
    """Every warehouse's secrets by warehouse name and key, read once; one error lists all missing."""
    environ = os.environ if environ is None else environ
    resolved: dict[str, dict[str, SecretStr]] = {}
    problems: list[str] = []
    for warehouse in warehouses:
        refs = warehouse.secret_refs() if isinstance(warehouse, RemoteWarehouse) else {}
        resolved[warehouse.name] = {}
        for key, ref in refs.items():
            where = f'warehouses (name = "{warehouse.name}").{key}'
            try:
                resolved[warehouse.name][key] = _secret_value(ref, environ)
            except ValueError as exc:
                problems.append(f"  - {where}: {exc}")
    if problems:
        raise ConfigError("cannot read warehouse secret(s):\n" + "\n".join(problems))
    return resolved


def _secret_value(ref: SecretRef, environ: Mapping[str, str]) -> SecretStr:
    if ref.env is not None:
        value = environ.get(ref.env, "")
        if not value.strip():
            raise ValueError(f"environment variable {ref.env} is not set")
        return SecretStr(value)
    from prefect.blocks.system import Secret

    name = str(ref.secret)
    try:
        return SecretStr(str(cast(Secret[str], Secret.load(name)).get()))
    except Exception as exc:
        raise ValueError(
            f"cannot load Prefect Secret block {name!r}: {type(exc).__name__}"
        ) from None
