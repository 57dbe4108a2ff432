from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import expect

from tests.browser import chromium
from tests.scheduler.conftest import Server
from tests.scheduler.county import files


@pytest.mark.browser
async def test_scheduler_page_end_to_end(server: Server, tmp_path: Path) -> None:
    paths = []
    for kind, text in files().items():
        path = tmp_path / f"{kind}.csv"
        path.write_text(text, encoding="utf-8")
        paths.append(str(path))
    bad = tmp_path / "bad" / "needs.csv"
    bad.parent.mkdir()
    bad.write_text("class_id,subject,periods_per_week\nghost,English,1\n", encoding="utf-8")
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{server.url}/scheduler#token={server.token()}")
        await expect(page.locator("#county-summary")).to_contain_text("0 schools")

        await page.set_input_files("#import-files", str(bad))
        await page.click("#import-button")
        await expect(page.locator("#message")).to_contain_text("nothing imported")
        await expect(page.locator("#import-result table")).to_contain_text("unknown class")

        await page.set_input_files("#import-files", paths)
        await page.click("#import-button")
        await expect(page.locator("#message")).to_contain_text("Import done")
        await expect(page.locator("#county-summary")).to_contain_text("6 needs")

        await page.fill("#time-limit", "5")
        await page.click("#solve-button")
        await expect(page.locator("#solve-progress")).to_be_visible()
        await expect(page.locator("#message")).to_contain_text("Solved: 4 of 8", timeout=30000)

        # The master school's grid: each subject has its own colour.
        await page.select_option("#grid-target", "zx")
        english = page.locator(".lesson[data-subject=English]").first
        await expect(english).to_contain_text("小河教学点 grade 4")
        music = page.locator(".lesson[data-subject=Music]")
        colours = await page.eval_on_selector_all(
            ".lesson",
            "els => [...new Set(els.map(e => e.dataset.subject + '=' + "
            "getComputedStyle(e).backgroundColor))]",
        )
        assert len({c.split("=")[1] for c in colours}) == len({c.split("=")[0] for c in colours})
        assert await music.count() == 0  # nobody could join the Tuesday Music lesson

        await page.select_option("#grid-kind", "point")
        await page.select_option("#grid-target", "xh")
        await expect(page.locator("#grid table")).to_contain_text("城关中心校 四年级1班")

        await expect(page.locator("#pairings")).to_contain_text("大山教学点")
        await expect(page.locator("#unserved")).to_contain_text(
            "no grade 4 Music master lesson overlaps a free period of 小河教学点 grade 4"
        )

        await page.click("#publish-button")
        await expect(page.locator("#message")).to_contain_text("Published plan")
        await expect(page.locator("#county-summary")).not_to_contain_text(" 0 dated lessons")

        await page.fill("#replan-date", "2025-09-08")
        await page.fill("#replan-teacher", "t-wang")
        await page.click("#replan-button")
        await expect(page.locator("#replan-result")).to_contain_text("lesson cancelled")
