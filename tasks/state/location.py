"""Where a tenant's state lives: a database URL (SQLite file or PostgreSQL), its password, the tenant."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

DEFAULT_TENANT = "default"
STATE_FILE = "state.sqlite3"
TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
SQLITE, POSTGRESQL = "sqlite", "postgresql"
_DRIVERS = {"sqlite": SQLITE, "sqlite+pysqlite": SQLITE}
_DRIVERS |= {"postgresql": POSTGRESQL, "postgres": POSTGRESQL, "postgresql+psycopg": POSTGRESQL}


@dataclass(frozen=True)
class StateLocation:
    """A state database (URL without password), the password apart, and whose state in it."""

    url: str
    tenant: str = DEFAULT_TENANT
    password: SecretStr | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", normalise_url(self.url))
        check_tenant(self.tenant)

    @classmethod
    def of(cls, where: StateLocation | str | Path, tenant: str | None = None) -> StateLocation:
        """A location from a URL, or from a folder (its state.sqlite3), as `state.dir` means it."""
        if isinstance(where, StateLocation):
            return where
        text = str(where)
        url = text if "://" in text else folder_url(text)
        return cls(url, tenant or DEFAULT_TENANT)

    @property
    def dialect(self) -> str:
        return dialect_of(self.url)

    @property
    def sqlite_path(self) -> Path:
        """The SQLite file (SQLite locations only)."""
        database = make_url(self.url).database
        if self.dialect != SQLITE or not database:
            raise ValueError(f"{self.url} is not a SQLite file")
        return Path(database)

    def engine_url(self) -> URL:
        """The URL SQLAlchemy connects with: psycopg 3 for PostgreSQL, the password put in."""
        url = make_url(self.url)
        if self.dialect == POSTGRESQL:
            url = url.set(drivername="postgresql+psycopg")
            if self.password is not None:
                url = url.set(password=self.password.get_secret_value())
        return url

    def __str__(self) -> str:
        return f"{self.url} (tenant {self.tenant})"


def folder_url(folder: str | Path) -> str:
    """`state.dir` as a URL: the SQLite file state.sqlite3 in that folder."""
    return f"sqlite:///{Path(folder).expanduser().resolve() / STATE_FILE}"


def dialect_of(url: str) -> str:
    try:
        driver = make_url(url).drivername
    except ArgumentError:
        raise ValueError(f"not a database URL: {url!r}") from None
    if driver not in _DRIVERS:
        raise ValueError(
            f"state URLs are sqlite:///<file> or postgresql://user@host:port/database, "
            f"not {driver}://"
        )
    return _DRIVERS[driver]


def normalise_url(url: str, base_dir: str | None = None) -> str:
    """Check a state URL: a known database, no password in it, a relative SQLite path made absolute."""
    dialect = dialect_of(url)
    parsed = make_url(url)
    if parsed.password is not None:
        raise ValueError(
            "the URL holds a password: leave it out and write "
            'state.password = { env = "VARIABLE" } or { secret = "prefect-secret-block" }'
        )
    if dialect == SQLITE:
        if not parsed.database or parsed.database == ":memory:":
            raise ValueError("a SQLite state needs a file: sqlite:///path/to/state.sqlite3")
        path = Path(parsed.database).expanduser()
        if not path.is_absolute():
            path = Path(base_dir or ".").resolve() / path
        return f"sqlite:///{path}"
    if not parsed.database:
        raise ValueError("a PostgreSQL state URL names its database: postgresql://user@host/db")
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def check_tenant(tenant: str, what: str = "tenant") -> str:
    """A tenant (or account) key: short, lowercase, safe in a file name and a limit's name."""
    if not TENANT_PATTERN.match(tenant):
        raise ValueError(
            f"{what} {tenant!r}: use 1-63 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return tenant
