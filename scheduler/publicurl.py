"""The address browsers and agents reach the server at, shared with the command line.

`tongke serve --public-url ...` (or a config file) knows the address; `tongke schedule
token` and `feed` run in another process. The server writes the address into its data
directory when it starts, and the command line reads it from there.
"""

from __future__ import annotations

from pathlib import Path

FILE_NAME = "public-url"


def write_public_url(data_dir: Path, url: str) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / FILE_NAME).write_text(url.rstrip("/") + "\n", encoding="utf-8")


def read_public_url(data_dir: Path) -> str | None:
    try:
        url = (data_dir / FILE_NAME).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return url or None
