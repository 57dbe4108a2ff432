"""A lesson link's one-time code, in real Chromium: exchanged, gone from the address bar,
and a reload still joins (from the HttpOnly cookie) although the code is spent."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiortc import VideoStreamTrack

from classroom_agent.client import LessonClient, Publication
from media_server.http import lesson_url
from tests.browser import open_page
from tests.lesson_server import ServerProcess
from tests.test_viewer_browser import wait_in_page

pytestmark = pytest.mark.browser


@pytest.fixture
async def master(server: ServerProcess, room: str) -> AsyncIterator[LessonClient]:
    client = LessonClient(server.url, room, server.token(room, "c-master", "master"))
    await client.connect()
    await client.publish([Publication(VideoStreamTrack(), "teacher_camera", codec="vp8")])
    try:
        yield client
    finally:
        await client.close()


async def test_a_code_link_joins_leaves_no_credential_in_the_address_and_survives_reload(
    server: ServerProcess, room: str, master: LessonClient
) -> None:
    minted = server.api(
        "POST", f"/api/rooms/{room}/tokens", {"role": "observer", "classroom": "class-5"}
    )
    link = minted["url"]
    assert "?code=" in link and minted["token"] not in link
    async with open_page() as session:
        page = session.page
        await page.goto(link)
        await wait_in_page(session, "() => window.tongke?.joined?.role === 'observer'", "joined")
        assert page.url.endswith(f"/lesson/{room}"), page.url
        history = await page.evaluate("() => window.location.href")
        assert "code=" not in history and "token=" not in history
        cookie_token = await page.evaluate("() => document.cookie")
        assert minted["token"] not in cookie_token and "tk_" not in cookie_token  # HttpOnly

        await page.reload()
        await wait_in_page(
            session, "() => window.tongke?.joined?.role === 'observer'", "joined after reload"
        )

        # The spent link, opened again (forwarded to someone else), is refused clearly.
        async with open_page() as other:
            await other.page.goto(link)
            await wait_in_page(other, "() => window.tongke?.phase === 'error'", "the refusal")
            text = await other.page.text_content("body")
            assert text is not None and "已被使用" in text


async def test_an_old_token_link_still_joins_with_the_token_gone_from_the_address(
    server: ServerProcess, room: str, master: LessonClient
) -> None:
    token = server.token(room, "class-6", "observer")
    async with open_page() as session:
        page = session.page
        response = await page.goto(lesson_url(server.url, room, token))
        assert response is not None
        # The server moved the token into the HttpOnly cookie before the page loaded.
        first = response.request.redirected_from
        assert first is not None and "token=" in first.url
        assert "token=" not in page.url
        await wait_in_page(session, "() => window.tongke?.joined?.role === 'observer'", "joined")
        assert token not in await page.evaluate("() => document.cookie + location.href")
        await page.reload()
        await wait_in_page(
            session, "() => window.tongke?.joined?.role === 'observer'", "joined after reload"
        )
