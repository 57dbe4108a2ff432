"""Fuzz a live server while a lesson runs; the lesson must not notice.

    python -m bench.fuzz --target signalling --cases 100000 [--json]

A real server (its own process) runs a lesson: one master publishing a camera and a
microphone, three observers receiving and decoding (the lesson's clients in a process of
their own, so the fuzzer cannot starve them). Then `--cases` generated inputs go to one
target (`--families` narrows the cases to some message types or routes, for bisecting):

- `signalling`: JSON messages (and non-JSON frames) on WebSockets, before and after
  `join`: random types and fields, lone surrogates, deep nesting, huge numbers, NaN,
  binary frames, control characters in names and labels;
- `http`: random bodies, query strings and tokens to the JSON API routes (rooms, tokens,
  lesson-code exchange, recording uploads, scheduler).

Afterwards it checks the server is alive, every observer still receives packets on every
track (and reports the longest time one stood still during the run), memory (RSS)
after a warm-up tenth of the cases grew less than 5 % and no `internal` error (a
traceback) was counted. Inputs come from a seeded generator, so a failing run can be
repeated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp

from bench.fanout import proc_rss_mb
from bench.soak import tracebacks
from classroom_agent.client import LessonClient, Publication, ws_url
from tests.lesson_server import start_server_process
from tests.media import PatternTrack, ToneTrack
from tongke.ice import use_host_addresses

TYPES = ["join", "publish", "unpublish", "subscribe_answer", "set_subscription",
         "request_keyframe", "ping", "hello", "", "__init__"]  # fmt: skip
FIELDS = ["room", "token", "name", "sdp", "tracks", "mids", "track", "paused", "layer", "id"]
VIEWERS = 3
NASTY_TEXT = ["\\ud800", "\\udfff", "\\u0000", "\\u202e", "\\n", "中文", "𝕏", "'", '\\"', "%s"]


class Generator:
    def __init__(
        self, seed: int, room: str, tokens: list[str], families: set[str] | None = None
    ) -> None:
        self.rng = random.Random(seed)
        self.room = room
        self.tokens = tokens
        # Only these case families (message types, "binary", "toplevel", "random_type"):
        # for bisecting a failure down to the messages that cause it.
        self.families = families

    def text(self) -> str:
        """A JSON string literal (escapes written by hand so lone surrogates survive)."""
        r = self.rng
        parts = [r.choice(NASTY_TEXT) if r.random() < 0.3 else r.choice("abcxyz09 _-")
                 for _ in range(r.randint(0, 12))]  # fmt: skip
        if r.random() < 0.02:
            parts.append("x" * r.randint(60, 400))
        return '"' + "".join(parts) + '"'

    def number(self) -> str:
        r = self.rng
        return r.choice(
            [
                str(r.randint(-5, 5)),
                str(r.randint(-(2**80), 2**80)),
                "1e999",
                "-1e999",
                "NaN",
                "Infinity",
                "9" * r.randint(20, 5000),
                repr(r.random()),
            ]
        )

    def value(self, depth: int = 0) -> str:
        r = self.rng
        roll = r.random()
        if depth > 3 or roll < 0.45:
            return r.choice([self.text, self.number, lambda: r.choice(["true", "false", "null"])])()
        if roll < 0.7:
            return "[" + ",".join(self.value(depth + 1) for _ in range(r.randint(0, 4))) + "]"
        if roll < 0.72:
            n = r.randint(10, 3000)
            return "[" * n + "]" * n
        items = [f"{self.text()}:{self.value(depth + 1)}" for _ in range(r.randint(0, 4))]
        return "{" + ",".join(items) + "}"

    def message(self) -> str | bytes:
        r = self.rng
        while True:
            roll = r.random()
            if roll < 0.03:
                family = "binary"
            elif roll < 0.06:
                family = "toplevel"
            else:
                family = r.choice(TYPES) if r.random() < 0.9 else "random_type"
            if self.families is None or family in self.families:
                break
        if family == "binary":
            return bytes(r.getrandbits(8) for _ in range(r.randint(0, 64)))
        if family == "toplevel":
            return self.value()
        fields = {"type": self.value() if family == "random_type" else json.dumps(family)}
        for name in r.sample(FIELDS, r.randint(0, 5)):
            fields[name] = self.value()
        if fields["type"] == '"join"' and r.random() < 0.5:
            fields["room"] = json.dumps(self.room)
            fields["token"] = json.dumps(r.choice(self.tokens))
        if fields["type"] == '"publish"' and r.random() < 0.5:
            track = {"mid": "0", "source": "point_camera", "kind": "video"}
            fields["tracks"] = json.dumps([track])[:-2] + f', "label": {self.text()}' + "}]"
            fields["sdp"] = json.dumps("v=0\r\n" + "a=x\r\n" * r.randint(0, 3))
        return "{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}"


async def fuzz_signalling(url: str, gen: Generator, cases: int, sockets: int = 8) -> dict[str, int]:
    outcomes: dict[str, int] = {}
    per_socket = cases // sockets

    async def worker(session: aiohttp.ClientSession, n: int) -> None:
        ws = await session.ws_connect(ws_url(url), max_msg_size=0)
        sent = 0
        while sent < n:
            if ws.closed:
                ws = await session.ws_connect(ws_url(url), max_msg_size=0)
            batch = min(50, n - sent)
            for _ in range(batch):
                msg = gen.message()
                try:
                    if isinstance(msg, bytes):
                        await ws.send_bytes(msg)
                    else:
                        await ws.send_str(msg)
                except ConnectionError:
                    break
            sent += batch
            # One ping per batch: wait for its pong so the server is never flooded blind.
            try:
                await ws.send_str('{"type": "ping", "id": "sync"}')
                while True:
                    reply = await ws.receive(timeout=30)
                    if reply.type != aiohttp.WSMsgType.TEXT:
                        break
                    data = json.loads(reply.data)
                    key = data.get("code") or data.get("type", "?")
                    outcomes[key] = outcomes.get(key, 0) + 1
                    if data.get("id") == "sync":
                        break
            except (ConnectionError, TimeoutError):
                pass
        await ws.close()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(worker(session, per_socket) for _ in range(sockets)))
    return outcomes


HTTP_ROUTES = [
    ("POST", "/api/rooms"),
    ("POST", "/api/rooms/{room}/tokens"),
    ("GET", "/api/rooms/{room}"),
    ("POST", "/api/lesson/exchange"),
    ("POST", "/api/recordings/{room}/uploads"),
    ("GET", "/api/replays"),
    ("POST", "/api/schedule/lessons/{room}/tokens"),
    ("GET", "/api/schedule/lessons"),
]


async def fuzz_http(
    url: str, gen: Generator, cases: int, admin: str, concurrency: int = 16
) -> dict[str, int]:
    outcomes: dict[str, int] = {}
    r = gen.rng
    # An http family is "METHOD path" as in HTTP_ROUTES, e.g. "POST /api/rooms".
    routes = [x for x in HTTP_ROUTES if gen.families is None or " ".join(x) in gen.families]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(cases):
        queue.put_nowait(i)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            queue.get_nowait()
            method, path = r.choice(routes)
            room = r.choice([gen.room, "x", "a" * 200, "%00", "..", "lesson-1"])
            target = url + path.replace("{room}", room)
            headers = {"Content-Type": "application/json"}
            roll = r.random()
            if roll < 0.4:
                headers["Authorization"] = f"Bearer {admin}"
            elif roll < 0.7:
                headers["Authorization"] = f"Bearer {r.choice(gen.tokens)}"
            elif roll < 0.8:
                headers["Authorization"] = "Bearer " + "x" * r.randint(0, 300)
            body = gen.value() if r.random() < 0.8 else "{" + gen.text()
            try:
                async with session.request(method, target, data=body.encode("utf-8", "surrogatepass"),
                                           headers=headers) as resp:  # fmt: skip
                    await resp.read()
                    outcomes[str(resp.status)] = outcomes.get(str(resp.status), 0) + 1
            except aiohttp.ClientError as exc:
                outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return outcomes


async def run(
    target: str, cases: int, seed: int, quiet: bool, families: set[str] | None = None
) -> dict[str, Any]:
    use_host_addresses(["127.0.0.1"])
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    data_dir = Path(tempfile.mkdtemp(prefix="tongke-fuzz-"))
    # Generous limits: the fuzzer is one address and a handful of tokens by design.
    limits = {k: [1e9, 1e9] for k in ("join_ip", "join_token", "mint_ip", "mint_token",
              "exchange_ip", "upload_ip", "upload_token", "scheduler_ip", "scheduler_token")}  # fmt: skip
    import os

    os.environ["TONGKE_RATE_LIMITS"] = json.dumps(limits)
    server_log = data_dir / "server.log"
    server = start_server_process(data_dir, stderr=server_log)
    pid = server.proc.pid
    room = "fuzz-lesson"
    server.open_room(room)
    # The lesson's own clients run in their own process: the fuzzer must not starve
    # them (a viewer whose event loop cannot read its socket reports loss and a low
    # REMB, and the server rightly lowers its estimate: that would measure us).
    lesson_tokens = [server.token(room, "c-master", "master")]
    lesson_tokens += [server.token(room, f"v-{i}", "observer") for i in range(VIEWERS)]
    ctx = multiprocessing.get_context("spawn")
    parent_end, child_end = ctx.Pipe()
    lesson = ctx.Process(target=lesson_main, args=(server.url, room, lesson_tokens, child_end))
    lesson.start()
    try:
        if not parent_end.poll(60) or parent_end.recv() != "ready":
            raise RuntimeError("the lesson's clients did not connect within 60 s")

        def forwarding() -> list[int]:
            """Packets sent so far on each track to each of our viewers (camera and mic
            separately: a paused picture must not hide behind flowing sound)."""
            stats = server.stats()["rooms"][room]["receiving"]
            return [
                t["packets"] or 0
                for p in sorted(stats, key=lambda p: p["classroom"])
                if p["classroom"].startswith("v-")
                for t in sorted(p["tracks"], key=lambda t: t["mid"] or "")
            ]

        await asyncio.sleep(3)
        rss_start = proc_rss_mb(pid)
        tokens = [server.token(room, "p-x", r) for r in ("point", "observer", "master")]
        tokens += [server.token("other", "p-y", "point"), "garbage"]
        gen = Generator(seed, room, tokens, families)

        async def fuzz(n: int) -> dict[str, int]:
            if target == "signalling":
                return await fuzz_signalling(server.url, gen, n)
            return await fuzz_http(server.url, gen, n, server.admin_token)

        log(f"fuzzing {target} with {cases} cases")
        t0 = time.monotonic()
        watch = asyncio.ensure_future(longest_stall(forwarding))
        # Memory is judged after a warm-up tenth of the cases, as in the soak: the
        # first requests fill caches, pools and lazily built tables once; a leak keeps
        # growing after that.
        warmup = cases // 10
        outcomes = await fuzz(warmup)
        rss_before = proc_rss_mb(pid)
        for key, count in (await fuzz(cases - warmup)).items():
            outcomes[key] = outcomes.get(key, 0) + count
        elapsed = time.monotonic() - t0
        watch.cancel()
        stall_s = await watch
        before = forwarding()
        await asyncio.sleep(3)
        after = forwarding()
        rss_after = proc_rss_mb(pid)
        stats = server.stats()
        alive = server.proc.poll() is None and server.api("GET", "/healthz")["status"] == "ok"
        all_forwarding = len(after) == VIEWERS * 2 and all(
            a > b for a, b in zip(after, before, strict=True)
        )
        growth = (rss_after - rss_before) / rss_before
        internal = stats.get("signalling_errors", {}).get("internal", 0)
        result = {
            "target": target,
            "cases": cases,
            "seed": seed,
            "seconds": round(elapsed, 1),
            "cases_per_s": round(cases / elapsed),
            "outcomes": dict(sorted(outcomes.items(), key=lambda kv: -kv[1])[:12]),
            "server_alive": alive,
            "lesson_forwards_to_every_subscriber": all_forwarding,
            "longest_viewer_stall_s": round(stall_s, 1),
            "participants": stats["rooms"][room]["participants"],
            # Rooms the fuzzer's admin calls opened: real state, part of the RSS growth.
            "rooms_open_after": len(stats["rooms"]),
            "viewer_packets_before_after": [before, after],
            "publisher_packets": [t["packets"] for t in stats["rooms"][room]["tracks"]],
            "receiving": [(p["classroom"], p["role"]) for p in stats["rooms"][room]["receiving"]],
            "viewer_downlinks": [
                p["downlink"]
                for p in stats["rooms"][room]["receiving"]
                if p["classroom"].startswith("v-")
            ],
            "rss_before_mb": round(rss_before, 1),
            "rss_after_mb": round(rss_after, 1),
            "rss_growth": round(growth, 4),
            "rss_growth_incl_warmup": round((rss_after - rss_start) / rss_start, 4),
            "internal_errors": internal,
            "server_tracebacks": tracebacks(server_log),
            "server_log": str(server_log),
        }
        result["ok"] = (
            alive
            and all_forwarding
            and growth < 0.05
            and internal == 0
            and result["server_tracebacks"] == 0
        )
        return result
    finally:
        parent_end.send("stop")
        lesson.join(30)
        if lesson.is_alive():
            lesson.kill()
        server.stop()


async def longest_stall(counts: Callable[[], list[int]]) -> float:
    """Until cancelled: the longest time (s) any viewer's track stood still."""
    loop = asyncio.get_running_loop()
    last = await loop.run_in_executor(None, counts)
    since = [time.monotonic()] * len(last)
    longest = 0.0
    try:
        while True:
            await asyncio.sleep(0.5)
            now_counts = await loop.run_in_executor(None, counts)
            now = time.monotonic()
            for i, (a, b) in enumerate(zip(last, now_counts, strict=False)):
                if b > a:
                    since[i] = now
                longest = max(longest, now - since[i])
            last = now_counts
    except asyncio.CancelledError:
        return longest


def lesson_main(url: str, room: str, tokens: list[str], conn: Connection) -> None:
    """The lesson in its own process: a master publishing, viewers receiving."""
    asyncio.run(_lesson(url, room, tokens, conn))


async def _lesson(url: str, room: str, tokens: list[str], conn: Connection) -> None:
    use_host_addresses(["127.0.0.1"])
    clients: list[LessonClient] = []
    try:
        master = LessonClient(url, room, tokens[0])
        await master.connect()
        clients.append(master)
        # Camera and microphone, as every lesson has (the receivers' estimates depend on it).
        await master.publish(
            [
                Publication(PatternTrack(), "teacher_camera", codec="vp8"),
                Publication(ToneTrack(), "classroom_mic", codec="opus"),
            ]
        )
        for token in tokens[1:]:
            viewer = LessonClient(url, room, token)
            await viewer.connect()
            clients.append(viewer)
        conn.send("ready")
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
    finally:
        for client in reversed(clients):
            await client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=["signalling", "http"], default="signalling")
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--families",
        help="comma-separated case families to send (signalling message types, binary, "
        "toplevel, random_type; http routes as 'POST /api/rooms'); default all: for "
        "bisecting a failure",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    families = set(args.families.split(",")) if args.families else None
    result = asyncio.run(run(args.target, args.cases, args.seed, args.json, families))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>36}: {value}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
