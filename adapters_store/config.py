"""Where tunegate keeps its state, and the store's own settings."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["StoreConfig", "check_postgres_url", "default_home", "redact_url"]


def default_home() -> Path:
    """`$TUNEGATE_HOME`, else `~/.local/share/tunegate` (XDG data dir)."""
    env = os.environ.get("TUNEGATE_HOME")
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return (base / "tunegate").resolve()


@dataclass
class StoreConfig:
    """Settings of the adapters store (`store.*` in the config file, `TUNEGATE_STORE_*`)."""

    max_lora_rank: int = field(
        default=64,
        metadata={"doc": "Largest LoRA rank accepted at publish (vLLM's max_lora_rank)."},
    )

    catalog_url: str | None = field(
        default=None,
        metadata={
            "doc": "A postgresql:// URL to keep the catalog in PostgreSQL, shared by several "
            "gateways (each must then see the same store folder, which holds the blobs); "
            "empty: the embedded catalog.sqlite3 in the store folder."
        },
    )
    path: Path | None = field(
        default=None,
        metadata={
            "doc": "The store folder (blobs/, tmp/, and catalog.sqlite3 without catalog_url); "
            "gateways sharing a catalog_url must all use one folder, e.g. on a shared "
            "filesystem; empty: $TUNEGATE_HOME/store."
        },
    )

    def __post_init__(self) -> None:
        if not 1 <= self.max_lora_rank <= 512:
            raise ValueError(f"store.max_lora_rank must be in 1..512, got {self.max_lora_rank}")
        if self.path is not None:
            self.path = Path(self.path).expanduser()
        if self.catalog_url == "":
            self.catalog_url = None  # an empty env var or file value means the default
        if self.catalog_url is not None:
            check_postgres_url(self.catalog_url, "store.catalog_url")


def check_postgres_url(url: str, setting: str) -> None:
    """Refuse anything but a well-formed postgresql:// URL, naming the setting (without the
    password); whether the server answers is checked when the catalog opens."""
    from psycopg.conninfo import conninfo_to_dict

    shown = redact_url(url) if isinstance(url, str) else url
    if not isinstance(url, str) or not url.startswith(("postgresql://", "postgres://")):
        raise ValueError(f"{setting} must be a postgresql:// URL, got {shown!r}")
    try:
        conninfo_to_dict(url)
    except Exception as exc:  # psycopg.ProgrammingError: libpq's parser refused it
        reason = " ".join(str(exc).split())
        raise ValueError(f"{setting}: not a valid PostgreSQL URL {shown!r}: {reason}") from None


def redact_url(url: str) -> str:
    """The URL without its password, fit for an error message or a log line."""
    url = re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", url)
