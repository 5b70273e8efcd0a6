"""The one configuration file (TOML), validated with pydantic and parsed once at the edge."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from tasks.config.errors import ConfigError, describe_errors
from tasks.config.fields import Duration, Section, http_url, relative_to_config
from tasks.config.paths import DEFAULT_STATE_DIR
from tasks.config.secrets import SecretRef
from tasks.sources import registry
from tasks.sources.warehouse import WarehouseBase
from tasks.state.location import (
    DEFAULT_TENANT,
    POSTGRESQL,
    check_tenant,
    dialect_of,
    folder_url,
    normalise_url,
)

BASE_URL_ENV = "LIGHTSPEED_BASE_URL"
TOKEN_URL_ENV = "LIGHTSPEED_TOKEN_URL"
LIGHTSPEED_TOKEN_URL = "https://accounts.lightspeed.app/oauth/token"


class StaticAuth(Section):
    """One long-lived Bearer token (lightspeed.token_secret, else $LIGHTSPEED_TOKEN)."""

    kind: Literal["static"] = Field("static", description="one token that does not expire")


class OAuthAuth(Section):
    """Access tokens from a refresh token that rotates; the newest kept encrypted in the state."""

    kind: Literal["oauth"] = Field(
        description="access tokens renewed with a rotating refresh token"
    )
    token_url: str = Field(
        LIGHTSPEED_TOKEN_URL,
        description="the OAuth token endpoint; $LIGHTSPEED_TOKEN_URL overrides it",
    )
    client_id: str = Field(min_length=1, description="the consumer key from Lightspeed's API setup")
    client_secret: SecretRef = Field(description="the consumer secret")
    client_auth: Literal["basic", "form"] = Field(
        "basic", description="send the client id and secret as HTTP Basic, or as form fields"
    )
    encryption_key: SecretRef = Field(
        description="Fernet key that encrypts the stored refresh token (see docs/authentication.md)"
    )
    refresh_margin_seconds: float = Field(
        60.0,
        ge=0,
        description="refresh this long before the access token expires (at most a quarter of its life)",
    )

    _url = field_validator("token_url")(http_url)


class LightspeedSettings(Section):
    base_url: str = Field(
        description="API root, e.g. https://lsapi-product.lightspeedapp.com; "
        "$LIGHTSPEED_BASE_URL overrides it"
    )
    token_secret: str | None = Field(
        None, description="Prefect Secret block holding the token; else $LIGHTSPEED_TOKEN"
    )
    auth: StaticAuth | OAuthAuth = Field(
        default_factory=lambda: StaticAuth(),
        discriminator="kind",
        description='how requests authenticate: kind = "static" (a token) or "oauth"',
    )
    request_size: int = Field(
        500,
        ge=1,
        le=100_000,
        description="products per PUT /inventory, the platform's cap; a 413 halves a request "
        "until it fits, and the run then splits anything as big before sending it",
    )
    chunk_size: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="products per chunk: one Prefect task run, retried as a whole. Default: "
        "whole requests, at least max_concurrency of them, and at most 50 chunks a run; "
        "--chunk-size and the flow parameter chunk_size override it",
    )
    max_concurrency: int = Field(
        4, ge=1, le=64, description="PUT requests in flight at once, over the whole run"
    )
    per_page: int = Field(250, ge=1, le=10_000, description="products per catalog page")
    timeout_seconds: float = Field(30.0, gt=0, description="timeout of each HTTP request")
    retries: int = Field(
        5,
        ge=0,
        le=20,
        description="retries of a chunk (a Prefect task retry) after a transient error; "
        "a retry sends only the requests that did not land",
    )
    retry_backoff_seconds: float = Field(
        2.0, ge=0, description="first retry delay; doubles on each further retry, with jitter"
    )
    max_retry_after_seconds: float = Field(
        120.0,
        ge=0,
        description="longest Retry-After waited out (chunks and GETs) before failing the attempt",
    )
    read_retries: int = Field(
        5, ge=0, le=50, description="retries of one GET (a catalog or read-back page)"
    )
    read_backoff_seconds: float = Field(
        0.5, ge=0, description="first GET retry waits up to this (full jitter), doubling after"
    )
    get_cost: float = Field(1.0, ge=0, description="bucket units a GET costs (rate-limit pacing)")
    put_cost: float = Field(10.0, ge=0, description="bucket units a PUT costs (rate-limit pacing)")
    account: str | None = Field(
        None,
        description="the API account the token belongs to; default: state.tenant. "
        "Configurations naming one account share its account_limit",
    )
    account_limit: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="requests in flight at once on this account, across every run "
        "(a Prefect global concurrency limit); none: no limit",
    )

    _url = field_validator("base_url")(http_url)
    _account = field_validator("account")(lambda v: v if v is None else check_tenant(v, "account"))

    @model_validator(mode="after")
    def _one_kind_of_token(self) -> LightspeedSettings:
        if self.token_secret is not None and self.auth.kind == "oauth":
            raise ValueError('token_secret is for auth kind = "static"; oauth needs no fixed token')
        return self


class CatalogSettings(Section):
    source: Literal["api", "file"] = Field(
        "api", description="api: GET /products, kept between runs; file: the CSV at path"
    )
    path: str | None = Field(
        None,
        description="for source = file: the catalog CSV (vendorSku,id,"
        "isInventoryTrackingEnabled,isBackorderingEnabled), relative to the config file",
    )
    absent: Literal["zero", "keep"] = Field(
        "zero", description="a tracked product no warehouse lists: zero sends 0, keep leaves it"
    )
    max_age: Duration = Field(
        timedelta(hours=24),
        description="a kept API catalog older than this is refreshed by the next run",
    )
    max_stale_age: Duration = Field(
        timedelta(hours=72),
        description="if a refresh fails, a kept catalog up to this old is still used (with a "
        "note); older fails the run; at least max_age",
    )

    _resolve = field_validator("path")(relative_to_config)

    @model_validator(mode="after")
    def _file_needs_path(self) -> CatalogSettings:
        if self.source == "file" and not self.path:
            raise ValueError('source = "file" needs path = "<catalog CSV>"')
        if self.max_stale_age < self.max_age:
            raise ValueError("max_stale_age must be at least max_age")
        return self


class ReportSettings(Section):
    dir: str = Field(
        "reports",
        validate_default=True,
        description="folder for each run's quarantine and not-landed CSVs, relative to the "
        "config file",
    )
    max_artifact_rows: int = Field(
        500, ge=1, description="flagged rows in the quarantine table artifact (all are in the CSV)"
    )
    keep_days: float = Field(
        30,
        gt=0,
        le=36_500,
        allow_inf_nan=False,
        description="days a report CSV is kept; older ones are deleted at the end of each run",
    )

    _resolve = field_validator("dir")(relative_to_config)


class StateSettings(Section):
    dir: str = Field(
        DEFAULT_STATE_DIR,
        validate_default=True,
        description="folder of the SQLite state (state.sqlite3), relative to the config file; "
        "keep it on persistent disk. Means url = sqlite:///<dir>/state.sqlite3",
    )
    url: str | None = Field(
        None,
        description="the state database instead of dir: sqlite:///<file> (relative to the "
        "config file) or postgresql://user@host:port/database, without a password",
    )
    password: SecretRef | None = Field(
        None, description="the PostgreSQL password (never in the url, never logged)"
    )
    tenant: str = Field(
        DEFAULT_TENANT,
        description="whose state this is: every state row is keyed by it; required with "
        "PostgreSQL. Two configurations with one tenant share state and run lock",
    )

    _resolve = field_validator("dir")(relative_to_config)
    _tenant = field_validator("tenant")(check_tenant)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else normalise_url(value, (info.context or {}).get("base_dir"))

    @model_validator(mode="after")
    def _one_database(self) -> StateSettings:
        if self.url is not None and "dir" in self.model_fields_set:
            raise ValueError("set state.url or state.dir, not both (dir means a SQLite file there)")
        shared = dialect_of(self.database_url) == POSTGRESQL
        if self.password is not None and not shared:
            raise ValueError("state.password is for a PostgreSQL url")
        if shared and "tenant" not in self.model_fields_set:
            raise ValueError(
                'a shared database needs state.tenant = "<supplier>": whose state this is '
                "(each supplier's key; two configs with one tenant share state and run lock)"
            )
        return self

    @property
    def database_url(self) -> str:
        """The state database: `url`, else the SQLite file state.sqlite3 in `dir`."""
        return self.url or folder_url(self.dir)


class GuardSettings(Section):
    max_zeroed_share: float = Field(
        0.2, ge=0, le=1, description="share of in-stock products a run may take to zero unasked"
    )
    max_units_drop_share: float = Field(
        0.5, ge=0, le=1, description="share of total available units a run may remove unasked"
    )
    approval_timeout_seconds: int = Field(
        3600, ge=1, description="how long a paused run waits for approval before it fails"
    )
    read_back: bool = Field(
        True, description="after the load, read quantities back and report drift"
    )
    read_back_pages: int = Field(
        50, ge=1, description="catalog pages the read-back reads per run, in rotation"
    )


class WatchSettings(Section):
    settle: Duration = Field(
        timedelta(seconds=2),
        description="a feed is an arrival once its fingerprint (size and time) held this long",
    )
    debounce: Duration = Field(
        timedelta(seconds=3),
        description="arrivals within this window of the first make one event, one run",
    )
    deployment: str = Field(
        "inventory-sync/on-feed-arrival",
        pattern=r"^[^/]+/[^/]+$",
        description="FLOW/DEPLOYMENT whose trigger the arrival events start; the watcher holds "
        "arrivals while one of its runs is in flight",
    )


class Settings(Section):
    lightspeed: LightspeedSettings
    catalog: CatalogSettings = CatalogSettings()
    warehouses: list[WarehouseBase] = Field(min_length=1)  # each of a registered kind
    report: ReportSettings = Field(default_factory=lambda: ReportSettings())
    state: StateSettings = Field(default_factory=lambda: StateSettings())
    guards: GuardSettings = Field(default_factory=lambda: GuardSettings())
    watch: WatchSettings = Field(default_factory=lambda: WatchSettings())

    @model_validator(mode="before")
    @classmethod
    def _account_defaults_to_tenant(cls, data: Any) -> Any:
        """One supplier, one account, unless the file says the account is shared."""
        if not (isinstance(data, dict) and isinstance(data.get("lightspeed"), dict)):
            return data
        state = data.get("state")
        tenant = state.get("tenant") if isinstance(state, dict) else None
        if data["lightspeed"].get("account") is None and isinstance(tenant, str):
            data = {**data, "lightspeed": {**data["lightspeed"], "account": tenant}}
        return data

    @field_validator("warehouses")
    @classmethod
    def _unique_names(cls, value: list[Any]) -> list[Any]:
        names = [w.name for w in value]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"warehouse names must be unique; repeated: {', '.join(repeated)}")
        return value


def account_name(settings: LightspeedSettings) -> str:
    """The API account a configuration's requests count against."""
    return settings.account or DEFAULT_TENANT


@cache
def _settings_model(kinds: tuple[str, ...]) -> type[Settings]:
    """Settings whose warehouses are validated as one of the registered kinds (by `kind`)."""
    warehouses: dict[str, Any] = {
        "warehouses": (list.__class_getitem__(registry.warehouse_type()), Field(min_length=1))
    }
    return create_model("Settings", __base__=Settings, **warehouses)


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
    auth = data.get("lightspeed", {}).get("auth")
    if environ.get(TOKEN_URL_ENV) and isinstance(auth, dict) and auth.get("kind") == "oauth":
        auth["token_url"] = environ[TOKEN_URL_ENV]  # a static token has no token endpoint
    for section in ("report", "state"):
        data.setdefault(section, {})  # so its default folder is resolved against the config's
    kinds = registry.names()
    try:
        return _settings_model(kinds).model_validate(data, context={"base_dir": str(path.parent)})
    except ValidationError as exc:
        raise ConfigError(
            f"{path}: invalid configuration:\n{describe_errors(exc, data, kinds)}"
        ) from None


def apply_run_options(settings: Settings, chunk_size: int | None) -> Settings:
    """The settings for one run, with a chunk-size override (products per task run) from the flow."""
    if not chunk_size:
        return settings
    lightspeed = settings.lightspeed.model_copy(update={"chunk_size": chunk_size})
    return settings.model_copy(update={"lightspeed": lightspeed})


def select_warehouses(settings: Settings, names: Sequence[str] | None) -> list[WarehouseBase]:
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
