"""Secrets: named in the file, read from the environment or a Prefect Secret block, never logged."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from pydantic import Field, SecretStr, model_validator

from tasks.config.errors import ConfigError
from tasks.config.fields import Section
from tasks.state.location import StateLocation

if TYPE_CHECKING:
    from tasks.config.settings import LightspeedSettings, StateSettings

TOKEN_ENV = "LIGHTSPEED_TOKEN"
SECRET_SHAPE = 'write { env = "VARIABLE" } or { secret = "prefect-secret-block" }'


class SecretRef(Section):
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


def block_value(name: str) -> SecretStr:
    """The value of a Prefect Secret block; an error names the block, never the value."""
    from prefect.blocks.system import Secret

    try:
        return SecretStr(str(cast(Secret[str], Secret.load(name)).get()))
    except Exception as exc:
        raise ValueError(
            f"cannot load Prefect Secret block {name!r}: {type(exc).__name__}"
        ) from None


def resolve_token(
    settings: LightspeedSettings, environ: Mapping[str, str] | None = None
) -> SecretStr:
    """The API token, from the named Prefect Secret block or else $LIGHTSPEED_TOKEN; never logged."""
    environ = os.environ if environ is None else environ
    if settings.token_secret:
        try:
            return block_value(settings.token_secret)
        except ValueError as exc:
            raise ConfigError(f"lightspeed.token_secret: {exc}") from None
    token = environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ConfigError(
            f"no API token: set {TOKEN_ENV} in the environment, or name a Prefect Secret block "
            "in lightspeed.token_secret"
        )
    return SecretStr(token)


def resolve_state(
    settings: StateSettings, environ: Mapping[str, str] | None = None
) -> StateLocation:
    """Where this config's state lives, its database password read once; never logged."""
    environ = os.environ if environ is None else environ
    password = None
    if settings.password is not None:
        try:
            password = _secret_value(settings.password, environ)
        except ValueError as exc:
            raise ConfigError(f"state.password: {exc}") from None
    return StateLocation(settings.database_url, settings.tenant, password)


def secret_refs(section: Section) -> dict[str, SecretRef]:
    """The secrets a section names, by key."""
    return {key: value for key, value in section if isinstance(value, SecretRef)}


def resolve_secrets(
    warehouses: Sequence[Any], environ: Mapping[str, str] | None = None
) -> dict[str, dict[str, SecretStr]]:
    """Every warehouse's secrets by warehouse name and key, read once; one error lists all missing."""
    environ = os.environ if environ is None else environ
    resolved: dict[str, dict[str, SecretStr]] = {}
    problems: list[str] = []
    for warehouse in warehouses:
        resolved[warehouse.name] = {}
        for key, ref in secret_refs(warehouse).items():
            where = f'warehouses (name = "{warehouse.name}").{key}'
            try:
                resolved[warehouse.name][key] = _secret_value(ref, environ)
            except ValueError as exc:
                problems.append(f"  - {where}: {exc}")
    if problems:
        raise ConfigError("cannot read warehouse secret(s):\n" + "\n".join(problems))
    return resolved


def read_secret(ref: SecretRef, environ: Mapping[str, str] | None = None) -> SecretStr:
    """The value a secret reference names; ValueError says what is missing, never the value."""
    return _secret_value(ref, os.environ if environ is None else environ)


def _secret_value(ref: SecretRef, environ: Mapping[str, str]) -> SecretStr:
    if ref.env is not None:
        value = environ.get(ref.env, "")
        if not value.strip():
            raise ValueError(f"environment variable {ref.env} is not set")
        return SecretStr(value)
    return block_value(str(ref.secret))
