"""`tongke serve` in its three shapes, one mechanism.

- one process (`--workers 1`, no Redis): exactly the single server, nothing added;
- a front with N media worker processes on this host (`--workers N`);
- with a `redis_url`: this host's front and nodes join the service's registry, so a
  client may connect to any host and reach its lesson. With `--workers 1` the front's
  own process is this host's media node.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from aiohttp import web

from media_server.http import SFU
from tongke.cluster.front import FRONT, Front, front_middleware
from tongke.cluster.node import MediaNode, advertised_host, default_node_id, setup_node_routes
from tongke.cluster.nodes import NodeInfo
from tongke.cluster.placement import (
    EDGE_POLICY,
    LocalPlacement,
    RedisPlacement,
    load_threshold_policy,
)
from tongke.cluster.registry import Registry
from tongke.cluster.workers import WorkerPool
from tongke.config import Config
from tongke.metrics import PEERS
from tongke.server import RunningServer, start_server

log = logging.getLogger(__name__)


def worker_count(config: Config) -> int:
    """`workers = 0` (the default) means one media worker per core."""
    if config.workers < 0:
        raise ValueError(f"workers: expected 0 (one per core) or more, got {config.workers}")
    return config.workers or os.cpu_count() or 1


@dataclass
class Service:
    server: RunningServer
    workers: int
    pool: WorkerPool | None = None
    node: MediaNode | None = None
    _stops: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    async def stop(self) -> None:
        for stop in reversed(self._stops):
            try:
                await stop()
            except Exception:
                log.exception("while stopping")
        await self.server.stop()


async def start_service(config: Config) -> Service:
    count = worker_count(config)
    if count == 1 and not config.redis_url:
        return Service(server=await start_server(config), workers=1)
    config.ensure_secret()
    # Workers open the host's databases before the front has created anything.
    config.data_dir.mkdir(parents=True, exist_ok=True)
    host_id = config.node_id or default_node_id()
    registry = (
        Registry(config.redis_url, prefix=config.cluster_name, ttl_s=config.heartbeat_ttl_s)
        if config.redis_url
        else None
    )
    if config.edge_participants > 0:
        # Cascade (media_server/relay.py): newcomers to a busy lesson go to an edge here.
        EDGE_POLICY.append(load_threshold_policy(config.edge_participants))
    pool: WorkerPool | None = None
    node: MediaNode | None = None
    if count > 1:
        pool = WorkerPool(config, count, host_id=host_id)
        local: Callable[[], list[NodeInfo]] = pool.live
    else:

        def local() -> list[NodeInfo]:
            # Until Redis says our id is another live process's, this host's node serves.
            return [node.info] if node is not None and not node.duplicate else []

    placement = RedisPlacement(registry, local) if registry is not None else LocalPlacement(local)
    if pool is not None:
        pool.on_died = placement.node_died
        if isinstance(placement, LocalPlacement):
            pool.on_loads = placement.loads_reported
    fronts: list[Front] = []

    def prepare(app: web.Application) -> None:
        nonlocal node
        front = app[FRONT] = Front(
            app,
            secret=config.secret,
            placement=placement,
            # With --workers 1 the front is the node: its own stats are the host's.
            local=pool.live if pool is not None else list,
            registry=registry,
            own_node=host_id if pool is None else None,
        )
        fronts.append(front)
        if pool is not None:
            # /metrics and the ops page on the front gather what its workers measure.
            app[PEERS] = lambda: [(w.id, w.url) for w in pool.live()]
        app.middlewares.append(front_middleware)
        if pool is None:
            assert registry is not None
            info = NodeInfo(
                id=host_id, url="", instance=uuid.uuid4().hex[:12], host=host_id, pid=os.getpid()
            )
            # Its own registry client: the node's heartbeat outlives the front's calls.
            node = MediaNode(
                info,
                app[SFU],
                Registry(
                    config.redis_url, prefix=config.cluster_name, ttl_s=config.heartbeat_ttl_s
                ),
            )
            setup_node_routes(app, node, config.secret)

    if pool is not None:
        await pool.start()
    # With workers the front hosts no lesson: the configured relay_port is theirs.
    front_config = replace(config, relay_port=0) if pool is not None else config
    server = await start_server(front_config, prepare=prepare)
    service = Service(server=server, workers=count, pool=pool, node=node)
    front = fronts[0]
    await front.start()
    if registry is not None:
        service._stops.append(registry.close)  # (stops run in reverse: this one last)
    service._stops.append(front.stop)
    if pool is not None:
        service._stops.append(pool.stop)
    if node is not None:
        node.info.url = f"http://{advertised_host(config)}:{server.port}"
        node.start()
        service._stops.append(node.stop)
    return service
