"""Every ``PERSONALIZER_*`` environment variable, read in one place (pydantic-settings).

The store (data directory, sync mode), the command line (keys, server options) and the
dashboard (endpoint, key, data directory) ask ``load_settings()`` rather than
``os.environ``, so a variable is named, typed and documented once. Settings are read
afresh on each call: a process (or a test) that changes its environment sees the change.
Keys are ``SecretStr``: printing the settings never shows them.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "load_settings"]


class Settings(BaseSettings):
    """The ``PERSONALIZER_*`` variables; an unset or empty one takes its default."""

    model_config = SettingsConfigDict(env_prefix="PERSONALIZER_", env_ignore_empty=True, extra="ignore")

    #: Data directory of the engine (event log, model, records).
    home: Path = Path(".personalizer")
    #: SQLite durability: ``FULL`` fsyncs every commit; anything else is ``NORMAL`` (fsync at checkpoints).
    sync: str = "NORMAL"
    #: Subscription keys the server accepts, two at once during a rotation (``PERSONALIZER_KEY``, ``_KEY_2``).
    key: SecretStr | None = None
    key_2: SecretStr | None = None
    #: A remote server for the dashboard (``http(s)://host:port``).
    endpoint: str | None = None
    #: Where the event log lives: a data directory (SQLite) or a ``postgresql://`` URL; None: ``home``.
    store: str | None = None
    #: The server's role: ``all`` (rank, reward and learn) or ``replica`` (scaled out on PostgreSQL).
    role: str | None = None
    # Server options as text: the command line converts them with its own types, so a bad
    # value is a usage error naming the option (the defaults live beside the server code).
    max_body_bytes: str | None = None
    max_model_bytes: str | None = None
    max_rank_features: str | None = None
    lock_timeout: str | None = None
    timeout_keep_alive: str | None = None
    header_timeout: str | None = None
    command_timeout: str | None = None

    @property
    def full_sync(self) -> bool:
        """True when every commit is fsynced (``PERSONALIZER_SYNC=FULL``)."""
        return self.sync.upper() == "FULL"

    def keys(self) -> list[str]:
        """The configured subscription keys, in order, without empty ones."""
        return [k.get_secret_value() for k in (self.key, self.key_2) if k is not None]


def load_settings() -> Settings:
    """The settings from the environment as it is now."""
    return Settings()
