"""Server configuration: embedded defaults, overridden by a TOML file, then by env vars.

Every setting has a default that works on one machine with nothing else running, so
`tongke serve` and `tongke demo` start without a config file.
"""

from __future__ import annotations

import json
import os
import secrets
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    # The address browsers and agents use to reach this server (links, feeds).
    public_url: str = ""
    data_dir: Path = field(default_factory=lambda: Path("data"))
    # Signs room tokens. Persisted under data_dir when not configured so that tokens
    # survive a restart of the server.
    secret: str = ""
    # Embedded defaults: SQLite under data_dir and an in-process event bus and job queue.
    database_url: str = ""
    redis_url: str = ""
    # Replays: how long after the first classroom's copy arrives the archiver waits for
    # the other expected classrooms before packaging (a late copy repackages the lesson).
    replay_upload_wait_s: int = 120
    # The server records every lesson room itself (media_server/recorder.py), so that
    # browser publishers and a classroom whose agent failed are in the replay too.
    server_recording: bool = True
    # A room nobody has published in for this long hands its recording over as if the
    # lesson had ended (for lessons nobody ends); recording resumes if someone publishes.
    server_recording_idle_s: int = 300
    # ICE: host candidates on these addresses only (empty: every interface).
    ice_addresses: list[str] = field(default_factory=list)
    max_message_bytes: int = 256 * 1024
    # TURN (coturn with use-auth-secret) for schools that block UDP: URLs handed to
    # every participant, the shared secret, and how long a credential lives (seconds).
    turn_urls: list[str] = field(default_factory=list)
    turn_secret: str = ""
    turn_ttl: int = 4 * 3600
    # UDP ports for media, e.g. "50000-50999" (empty: any port): what a firewall opens.
    ice_port_range: str = ""
    # Per-subscriber bandwidth estimation, layer allocation and pacing (off: forward
    # everything as it comes; only for measuring what they cost).
    adaptive_media: bool = True
    # RED (RFC 2198) around Opus towards browsers that accept it (off: to compare).
    audio_red: bool = True
    # How long a lesson link's one-time code may wait to be opened (tongke/lessoncode.py).
    lesson_code_ttl_s: int = 30 * 60
    # Feed tokens (a classroom's schedule and lesson tokens): lifetime when minted.
    feed_token_ttl_s: int = 180 * 24 * 3600
    # Where the HTTP access log goes ("": data_dir/access.log, "-": nowhere).
    access_log: str = ""
    # Overrides of tongke/ratelimit.py DEFAULT_RATES: {"join_token": [burst, per_second]}.
    rate_limits: dict[str, list[float]] = field(default_factory=dict)
    # Media workers on this host (tongke/cluster): 0 = one per core, 1 = one process
    # that does everything (as before clustering).
    workers: int = 0
    # With redis_url: this host's name in the node registry ("": hostname), the address
    # other nodes reach its media nodes at ("": http://<host or first ICE address>), the
    # Redis key prefix (several services may share one Redis) and how long a node's
    # heartbeat stays valid.
    node_id: str = ""
    node_address: str = ""
    cluster_name: str = "tongke"
    heartbeat_ttl_s: int = 3
    # Cascade: once a lesson's origin node holds this many participants, newcomers at
    # another node (worker or host) are served by an edge there (media_server/relay.py);
    # 0 = never, every participant is proxied to the origin.
    edge_participants: int = 0
    # GET /metrics (Prometheus): a scraper sends `Authorization: Bearer <metrics_token>`
    # (a global admin token works too); addresses or networks in metrics_allow, e.g.
    # "10.0.0.0/8", may scrape without one. Both empty: global admin tokens only.
    metrics_token: str = ""
    metrics_allow: list[str] = field(default_factory=list)
    # The ops page's quality history: one sample per teaching point this often (seconds),
    # kept for an hour.
    ops_sample_s: float = 10.0
    # The UDP port of this node's relay to other nodes (cascaded lessons; 0: any port).
    relay_port: int = 0

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'tongke.db'}"

    def ensure_secret(self) -> str:
        """Return the signing secret, creating and persisting one on first use."""
        if self.secret:
            return self.secret
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / "secret.key"
        if path.exists():
            self.secret = path.read_text().strip()
        else:
            self.secret = secrets.token_urlsafe(32)
            # Created 0600: a file written first and chmod-ed after is readable in between.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(self.secret)
        return self.secret


_ENV_PREFIX = "TONGKE_"


def load_config(path: Path | None = None, **overrides: object) -> Config:
    """Build a Config from defaults, an optional TOML file ([server] table), env, overrides."""
    values: dict[str, object] = {}
    if path is not None:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        values.update(data.get("server", data))
    names = {f.name: f for f in fields(Config)}
    for name in names:
        env = os.environ.get(_ENV_PREFIX + name.upper())
        if env is not None:
            values[name] = env
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(values) - set(names)
    if unknown:
        raise ValueError(f"unknown configuration keys: {', '.join(sorted(unknown))}")
    cfg = Config()
    for name, value in values.items():
        current = getattr(cfg, name)
        if isinstance(current, Path):
            value = Path(str(value))
        elif isinstance(current, bool):
            value = str(value).lower() in ("1", "true", "yes", "on")
        elif isinstance(current, float):
            value = float(value)  # type: ignore[arg-type]
        elif isinstance(current, int):
            value = int(value)  # type: ignore[call-overload]
        elif isinstance(current, dict) and isinstance(value, str):
            value = json.loads(value)
        elif isinstance(current, list) and isinstance(value, str):
            value = [v for v in value.split(",") if v]
        setattr(cfg, name, value)
    return cfg
