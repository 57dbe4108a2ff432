"""Start and stop the all-in-one server inside a running event loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from tongke import rtc_internals
from tongke.accesslog import RedactingAccessLogger, open_access_log
from tongke.app import CTX, create_app
from tongke.config import Config
from tongke.ice import use_host_addresses


@dataclass
class RunningServer:
    runner: web.AppRunner
    app: web.Application
    config: Config
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def secret(self) -> str:
        return self.app[CTX].secret

    async def stop(self) -> None:
        await self.runner.cleanup()


def parse_port_range(text: str) -> tuple[int, int]:
    """'50000-50999' -> (50000, 50999), with an error that names the setting."""
    try:
        low, high = (int(part) for part in text.split("-", 1))
    except ValueError:
        raise ValueError(
            f"ice_port_range: expected LOW-HIGH, e.g. 50000-50999, got {text!r}"
        ) from None
    if not 0 < low <= high < 65536:
        raise ValueError(f"ice_port_range: {text!r} is not a range of UDP ports")
    return low, high


async def start_server(
    config: Config, *, prepare: Callable[[web.Application], None] | None = None
) -> RunningServer:
    """Serve `create_app(config)`; `prepare` may add to the app before it starts."""
    if config.ice_addresses:
        use_host_addresses(config.ice_addresses)
    if config.ice_port_range:
        rtc_internals.use_port_range(*parse_port_range(config.ice_port_range))
    app = create_app(config)
    if prepare is not None:
        prepare(app)
    if config.access_log == "-":
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
    else:
        path = Path(config.access_log) if config.access_log else config.data_dir / "access.log"
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=open_access_log(path),
            access_log_class=RedactingAccessLogger,
        )
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    port = config.port
    if port == 0:
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        if not config.public_url:
            config.public_url = f"http://{config.host}:{port}"
    return RunningServer(runner=runner, app=app, config=config, port=port)
