"""docker/ cannot drift from the code: every command, flag, variable, port and health
check the container files use is checked against the real CLI parser, the configuration,
the routes and the metrics the server exports. (This machine has no container engine.)"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from media_server.cli import config_from_args
from tests.lesson_server import ROOT
from tongke.cli import build_parser
from tongke.config import Config, load_config
from tongke.server import parse_port_range
from tongke.turn import TurnSettings

DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
ENV_EXAMPLE = DOCKER / "env.example"
DASHBOARD = DOCKER / "grafana" / "tongke.json"
PROMETHEUS = DOCKER / "prometheus" / "prometheus.yml"
VAR = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def example_env() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def expand(value: Any, env: dict[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, with the example values."""
    if isinstance(value, str):

        def one(m: re.Match[str]) -> str:
            name, op, arg = m.group(1), m.group(2), m.group(3)
            if name in env:
                return env[name]
            assert op == "-", f"${{{name}}} has no default and is not in docker/env.example"
            return arg

        return VAR.sub(one, value)
    if isinstance(value, list):
        return [expand(v, env) for v in value]
    if isinstance(value, dict):
        return {k: expand(v, env) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return expand(yaml.safe_load(COMPOSE.read_text()), example_env())


def tongke_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    image = compose["services"]["node"]["image"]
    return {n: s for n, s in compose["services"].items() if s.get("image") == image}


def argv(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def exact_flags(argv: list[str]) -> set[str]:
    """The long options of the (sub)command `argv` names, as spelled in the parser.

    argparse accepts abbreviations, so a renamed flag could still parse: compare exactly.
    """
    import argparse

    parser = build_parser()
    words = [w for w in argv if not w.startswith("-")]
    for word in words:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            break
        parser = subs[0].choices[word]
    return {o for a in parser._actions for o in a.option_strings}


def nodes(compose: dict[str, Any]) -> dict[str, Any]:
    """service name -> parsed `tongke serve` arguments."""
    parser = build_parser()
    return {
        name: parser.parse_args(argv(s))
        for name, s in tongke_services(compose).items()
        if argv(s)[0] == "serve"
    }


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) with continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in dockerfile():
        if word == "ENV":
            for part in shlex.split(rest):
                key, _, value = part.partition("=")
                env[key] = value
    return env


def config_for(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Config:
    """The configuration a tongke container runs with: image ENV, compose env, flags."""
    env = {**dockerfile_env(), **service.get("environment", {})}
    for key in [k for k in os.environ if k.startswith("TONGKE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("TONGKE_"):
            monkeypatch.setenv(key, str(value))
    args = build_parser().parse_args(argv(service))
    if args.command == "serve":
        return config_from_args(args)
    return load_config()


def app_get_routes(tmp_path: Path) -> set[str]:
    from tongke.app import create_app

    app = create_app(Config(data_dir=tmp_path, secret="deploy-secret-0123456789abcdef"))
    return {
        r.resource.canonical
        for r in app.router.routes()
        if r.method == "GET" and r.resource is not None
    }


def health_urls(service: dict[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    text = " ".join(test) if isinstance(test, list) else test
    return re.findall(r"http://[^'\"\s)]+", text)


# -- the tests ----------------------------------------------------------------------------


def test_every_variable_of_the_compose_file_is_in_the_example_env() -> None:
    env = example_env()
    used = {m.group(1) for m in VAR.finditer(COMPOSE.read_text())}
    defaulted = {m.group(1) for m in VAR.finditer(COMPOSE.read_text()) if m.group(2) == "-"}
    assert used - defaulted <= set(env), f"not in docker/env.example: {used - defaulted - set(env)}"
    assert set(env) <= used, f"docker/env.example sets what compose never uses: {set(env) - used}"


def test_every_tongke_command_and_flag_exists_in_the_cli(compose: dict[str, Any]) -> None:
    parser = build_parser()
    services = tongke_services(compose)
    assert {"node", "packager"} <= set(services)
    for name, service in services.items():
        try:
            parser.parse_args(argv(service))
        except SystemExit:
            pytest.fail(f"{name}: `tongke {' '.join(argv(service))}` is not a valid command")
        flags = {w.split("=")[0] for w in argv(service) if w.startswith("--")}
        assert flags <= exact_flags(argv(service)), f"{name}: {flags - exact_flags(argv(service))}"
    assert argv(services["packager"])[:2] == ["replay", "worker"]
    # The image's own entry point and default command.
    entry = next(json.loads(r) for w, r in dockerfile() if w == "ENTRYPOINT")
    cmd = next(json.loads(r) for w, r in dockerfile() if w == "CMD")
    assert entry == ["tongke"]
    parser.parse_args(cmd)


def test_every_tongke_variable_is_a_configuration_key_with_a_usable_value(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = {f"TONGKE_{name.upper()}" for name in Config.__dataclass_fields__}
    for name, service in tongke_services(compose).items():
        for var in service.get("environment", {}):
            assert not var.startswith("TONGKE_") or var in keys, f"{name}: {var} is no config key"
    for var in dockerfile_env():
        assert not var.startswith("TONGKE_") or var in keys, f"Dockerfile: {var} is no config key"
    for name in nodes(compose):
        config = config_for(compose["services"][name], monkeypatch)
        # What the server checks at start-up must hold for the values given.
        turn = TurnSettings.from_config(config.turn_urls, config.turn_secret, config.turn_ttl)
        assert turn is not None and len(turn.urls) == 3
        parse_port_range(config.ice_port_range)
        assert config.database_url.startswith("postgresql+psycopg://")
        assert config.metrics_token and config.secret and config.public_url.startswith("https://")


def test_ports_agree_between_nodes_health_checks_prometheus_and_turn(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    services = compose["services"]
    configs = {name: config_for(services[name], monkeypatch) for name in nodes(compose)}
    ports = {name: c.port for name, c in configs.items()}
    assert len(set(ports.values())) == len(ports), f"two nodes on one port: {ports}"
    for name, config in configs.items():
        for url in health_urls(services[name]):
            assert urlsplit(url).port == config.port, f"{name} health check asks {url}"
    # Prometheus scrapes exactly the nodes.
    prom = yaml.safe_load(PROMETHEUS.read_text())
    job = prom["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"127.0.0.1:{p}" for p in ports.values()}
    # Media port ranges: one per node, none overlapping TURN's relay ports.
    coturn = {
        a.split("=", 1)[0]: a.split("=", 1)[1] if "=" in a else "" for a in argv(services["coturn"])
    }
    relay = (int(coturn["--min-port"]), int(coturn["--max-port"]))
    ranges = sorted([parse_port_range(c.ice_port_range) for c in configs.values()] + [relay])
    for (_, high), (low, _) in itertools.pairwise(ranges):
        assert high < low, f"overlapping UDP port ranges: {ranges}"
    # TURN URLs name the ports coturn listens on; turns: is the TLS one (443).
    tls, plain = int(coturn["--tls-listening-port"]), int(coturn["--listening-port"])
    assert tls == 443
    for url in next(iter(configs.values())).turn_urls:
        scheme, rest = url.split(":", 1)
        port = int(rest.split(":")[1].split("?")[0])
        assert port == (tls if scheme == "turns" else plain), url
    # The shared secret is the same on both sides.
    raw = yaml.safe_load(COMPOSE.read_text())
    node_secret = raw["x-tongke-env"]["TONGKE_TURN_SECRET"]
    turn_secret = next(a for a in raw["services"]["coturn"]["command"] if "static-auth" in a)
    assert VAR.search(node_secret).group(1) == VAR.search(turn_secret).group(1)  # type: ignore[union-attr]
    # Redis and PostgreSQL URLs reach the ports those services publish.
    config = next(iter(configs.values()))
    redis_port = urlsplit(config.redis_url).port
    assert f"127.0.0.1:{redis_port}:6379" in services["redis"]["ports"]
    assert str(redis_port) in argv(services["redis"])
    assert f"127.0.0.1:{urlsplit(config.database_url).port}:5432" in services["postgres"]["ports"]
    assert f"redis://127.0.0.1:{redis_port}/0" in argv(services["packager"])
    # The image's port.
    env = dockerfile_env()
    exposed = [r for w, r in dockerfile() if w == "EXPOSE"]
    assert exposed == [f"{env['TONGKE_PORT']}/tcp"]


def test_health_checks_ask_real_routes(compose: dict[str, Any], tmp_path: Path) -> None:
    routes = app_get_routes(tmp_path)
    assert {"/healthz", "/readyz", "/metrics"} <= routes
    for name in nodes(compose):
        urls = health_urls(compose["services"][name])
        assert urls, f"{name} has no HTTP health check"
        for url in urls:
            assert urlsplit(url).path in routes, f"{name}: {url} is not a route"
    for name, service in compose["services"].items():
        assert "healthcheck" in service, f"{name} has no health check"
    for name, service in compose["services"].items():
        test = service["healthcheck"]["test"]
        if isinstance(test, list) and test[1:3] == ["python", "-c"]:
            compile(test[3], f"{name} health check", "exec")  # the snippet is Python
    check = next(r for w, r in dockerfile() if w == "HEALTHCHECK")
    exec_form = json.loads(check.split(" CMD ", 1)[1])
    assert exec_form[:2] == ["python", "-c"]
    compile(exec_form[2], "the image's health check", "exec")
    paths = re.findall(r"http://127\.0\.0\.1:\{[^}]*\}(/\w+)", check)
    assert paths and all(p in routes for p in paths), check
    assert f"'TONGKE_PORT', '{dockerfile_env()['TONGKE_PORT']}'" in check


def test_packagers_see_every_node_recording_at_the_same_path(compose: dict[str, Any]) -> None:
    services = compose["services"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in services["packager"]["volumes"]}
    for name, args in nodes(compose).items():
        data_dir = str(args.data_dir)
        node_mounts = {m.split(":")[1]: m.split(":")[0] for m in services[name]["volumes"]}
        target = next((t for t in node_mounts if data_dir.startswith(t + "/")), None)
        assert target is not None, f"{name}: data dir {data_dir} is not on a volume"
        assert mounts.get(target) == node_mounts[target], f"the packager lacks {name}'s volume"
    data_dirs = [str(a.data_dir) for a in nodes(compose).values()]
    assert len(set(data_dirs)) == len(data_dirs), "two nodes would share rooms.json"


def test_the_image_is_debian_runs_as_a_user_and_copies_what_exists() -> None:
    steps = dockerfile()
    base = next(r for w, r in steps if w == "FROM")
    assert "bookworm" in base or base.startswith("debian")
    user = [r for w, r in steps if w == "USER"]
    assert user and user[-1] not in ("root", "0")
    for word, rest in steps:
        if word == "COPY":
            for src in shlex.split(rest)[:-1]:
                assert (ROOT / src).exists(), f"COPY {src}: no such path"


async def test_the_dashboard_uses_only_metrics_the_server_exports(tmp_path: Path) -> None:
    from tongke.app import create_app

    config = Config(data_dir=tmp_path, secret="deploy-secret-0123456789abcdef", metrics_token="m")
    client = TestClient(TestServer(create_app(config)))
    await client.start_server()
    try:
        resp = await client.get("/metrics", headers={"Authorization": "Bearer m"})
        assert resp.status == 200
        text = await resp.text()
    finally:
        await client.close()
    exported = set()
    for family in text_string_to_metric_families(text):
        if family.type == "counter":
            exported.add(family.name + "_total")
        elif family.type in ("histogram", "summary"):
            exported |= {family.name + s for s in ("_bucket", "_sum", "_count")}
        else:
            exported.add(family.name)
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    assert len(queries) > 20
    for query in queries:
        names = set(re.findall(r"\b((?:tongke|process)_[a-z0-9_]+)\b", query))
        assert names, f"a panel query with no Tongke metric: {query}"
        assert names <= exported, f"not exported by /metrics: {names - exported} in {query}"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
