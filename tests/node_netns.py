"""Two Tongke nodes as separate hosts: each in its own network namespace, started here.

    root namespace (clients) --veth-- origin namespace --veth-- edge namespace
                             \\-------------------veth-----------------/

The test process (publishers, subscribers) reaches each node on its own veth; the nodes
reach each other on a third one, their server-to-server line, where a test can drop
packets (nftables: this kernel has no netem). Namespace names start with the prefix the
caller gives, so leftovers are easy to attribute and remove.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.impair import netns_available
from tests.lesson_server import ServerProcess, start_server_process
from tongke.ice import use_host_addresses

__all__ = ["NodePair", "netns_available"]


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


class NodePair:
    def __init__(self, prefix: str, subnet: int) -> None:
        if not 1 <= subnet <= 254:
            raise ValueError("subnet must be 1..254")
        self.prefix = prefix
        self.namespaces = {"origin": f"{prefix}-o", "edge": f"{prefix}-e"}
        # Where the clients (root namespace) reach each node, and the nodes each other.
        self.client_side = {"origin": f"10.{subnet}.1.1", "edge": f"10.{subnet}.2.1"}
        self.address = {"origin": f"10.{subnet}.1.2", "edge": f"10.{subnet}.2.2"}
        self.line = {"origin": f"10.{subnet}.3.1", "edge": f"10.{subnet}.3.2"}
        self._veths = [f"{prefix}o", f"{prefix}e"]
        self.servers: dict[str, ServerProcess] = {}

    def exec_prefix(self, node: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[node]]

    def start(self) -> NodePair:
        self.close()  # what a killed run left behind
        o, e = self.namespaces["origin"], self.namespaces["edge"]
        for ns in (o, e):
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        pairs = [
            (self._veths[0], None, self.client_side["origin"], o, self.address["origin"]),
            (self._veths[1], None, self.client_side["edge"], e, self.address["edge"]),
            (f"{self.prefix}l", o, self.line["origin"], e, self.line["edge"]),
        ]
        for name, ns_a, addr_a, ns_b, addr_b in pairs:
            _run("ip", "link", "add", name, "type", "veth", "peer", "name", name + "p")
            if ns_a is not None:
                _run("ip", "link", "set", name, "netns", ns_a)
            _run("ip", "link", "set", name + "p", "netns", ns_b)
            a = ["ip", "-n", ns_a] if ns_a is not None else ["ip"]
            _run(*a, "addr", "add", f"{addr_a}/24", "dev", name)
            _run(*a, "link", "set", name, "up")
            _run("ip", "-n", ns_b, "addr", "add", f"{addr_b}/24", "dev", name + "p")
            _run("ip", "-n", ns_b, "link", "set", name + "p", "up")
        return self

    def start_server(
        self, node: str, data_dir: Path, *, cpu: int | None = None, extra: list[str] | None = None
    ) -> ServerProcess:
        """A node's server in its namespace, listening on all its addresses; its URL is
        the one the clients use."""
        server = start_server_process(
            data_dir,
            prefix=self.exec_prefix(node),
            cpu=cpu,
            extra=["--host", "0.0.0.0", "--ice-address", self.address[node], *(extra or [])],
        )
        port = server.url.rsplit(":", 1)[1]
        server = dataclasses.replace(server, url=f"http://{self.address[node]}:{port}")
        self.servers[node] = server
        return server

    def line_url(self, node: str) -> str:
        """A node's URL on the server-to-server line (what the other node dials)."""
        port = self.servers[node].url.rsplit(":", 1)[1]
        return f"http://{self.line[node]}:{port}"

    def drop_on_line(self, every: int, udp_dport: int) -> None:
        """Drop every `every`-th UDP datagram the origin sends to the edge's `udp_dport`
        (deterministic: a counter, not a random draw)."""
        ns = self.namespaces["origin"]
        _run("ip", "netns", "exec", ns, "nft", "add", "table", "inet", "cs_loss")
        _run(
            "ip", "netns", "exec", ns, "nft", "add", "chain", "inet", "cs_loss", "out",
            "{ type filter hook output priority 0 ; }",
        )  # fmt: skip
        _run(
            "ip", "netns", "exec", ns, "nft", "add", "rule", "inet", "cs_loss", "out",
            "ip", "daddr", self.line["edge"], "udp", "dport", str(udp_dport),
            "numgen", "inc", "mod", str(every), "==", "0", "drop",
        )  # fmt: skip

    def heal_line(self) -> None:
        subprocess.run(
            [*self.exec_prefix("origin"), "nft", "delete", "table", "inet", "cs_loss"],
            capture_output=True,
        )

    def close(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.servers.clear()
        for ns in self.namespaces.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for veth in self._veths:  # gone with their peers' namespaces; just in case
            subprocess.run(["ip", "link", "del", veth], capture_output=True)


@contextmanager
def origin_and_edge(name: str, subnet: int, data_dir: Callable[[str], Path]) -> Iterator[NodePair]:
    """Two nodes, "origin" and "edge", each a server in its own namespace; the test's
    clients reach them on the root side of their veths."""
    pair = NodePair(name, subnet=subnet).start()
    try:
        pair.start_server("origin", data_dir("origin"))
        pair.start_server("edge", data_dir("edge"))
        use_host_addresses(["127.0.0.1", *pair.client_side.values()])
        yield pair
    finally:
        use_host_addresses(["127.0.0.1"])
        pair.close()
