"""Debian's headless Chromium driven by Playwright, for browser tests.

Never downloads a browser: it launches the system's /usr/bin/chromium. Tests that need
a page use `open_page()`; the page's console and uncaught errors are kept so that a
failing test can say what the page said.

Beware: `page.wait_for_function` does not await a Promise; an async predicate returns a
Promise, which is truthy, so the wait ends at once. Poll synchronous predicates over
state the page keeps (the viewer keeps its latest getStats() reports in
`window.tongke.inbound`), and use `page.evaluate` (which does await) for one-off reads.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright

CHROMIUM = os.environ.get("TONGKE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Real host candidates (not mDNS names) and loopback ones: the server is on 127.0.0.1.
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--allow-loopback-in-peer-connection",
    # Sound may start without a click, as a teacher's click would allow.
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-ui-for-media-stream",
]


def require_chromium() -> None:
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM}")


@dataclass
class PageSession:
    page: Page
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def diagnostics(self) -> str:
        lines = [f"console: {line}" for line in self.console[-40:]]
        lines += [f"page error: {line}" for line in self.errors]
        return "\n".join(lines) or "(the page logged nothing)"


@asynccontextmanager
async def chromium(extra_args: list[str] | None = None) -> AsyncIterator[Browser]:
    require_chromium()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *(extra_args or [])]
        )
        try:
            yield browser
        finally:
            await browser.close()


@asynccontextmanager
async def open_page(
    browser: Browser | None = None, *, viewport: dict[str, int] | None = None
) -> AsyncIterator[PageSession]:
    """A fresh page (its own context: no shared storage); its own browser if none given."""
    if browser is None:
        async with chromium() as own, open_page(own, viewport=viewport) as session:
            yield session
        return
    context = await browser.new_context(viewport=viewport or {"width": 1280, "height": 800})
    page = await context.new_page()
    session = PageSession(page)

    def on_console(message: ConsoleMessage) -> None:
        session.console.append(f"{message.type}: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: session.errors.append(str(exc)))
    try:
        yield session
    finally:
        await context.close()
