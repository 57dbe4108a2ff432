from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lesson_server import ServerProcess, start_server_process
from tongke.ice import use_host_addresses

# aioice leaves loopback out of host candidates; every peer in the tests lives there.
use_host_addresses(["127.0.0.1"])

_rooms = itertools.count(1)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # The forwarding and signalling tests share this server for the whole session: it
    # does not record (its rooms never end, so their recordings would be packaged in the
    # background while other tests run). tests/recording/test_server_recorder.py starts
    # recording servers of its own.
    proc = start_server_process(tmp_path_factory.mktemp("server-data"), recording=False)
    yield proc
    proc.stop()


@pytest.fixture
def room(server: ServerProcess) -> str:
    """A freshly opened lesson room on the shared test server."""
    name = f"lesson-{next(_rooms)}"
    server.open_room(name)
    return name


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path
