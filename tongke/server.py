"""Start and stop the all-in-one server inside a running event loop."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

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


async def start_server(config: Config) -> RunningServer:
    if config.ice_addresses:
        use_host_addresses(config.ice_addresses)
    app = create_app(config)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
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
