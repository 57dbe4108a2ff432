"""A packaging worker that stalls in the middle of its job, for the kill test.

It announces the stall by creating the file named on the command line, then hangs in the
composed-program stage until the test SIGKILLs it.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

import recording.package
from recording.jobs import RedisJobQueue

url, stream, marker = sys.argv[1], sys.argv[2], Path(sys.argv[3])


def stall(*args: object, **kwargs: object) -> None:
    marker.write_text("in the middle of a job")
    threading.Event().wait()


recording.package.build_program = stall  # type: ignore[assignment]


async def main() -> None:
    q = RedisJobQueue(url, stream=stream, consumer="doomed", claim_idle_s=1, heartbeat_s=0.2)
    await q.run_worker()


asyncio.run(main())
