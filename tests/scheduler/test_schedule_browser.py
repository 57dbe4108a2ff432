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
        # schools.csv as Excel on a Chinese Windows saves it: GBK, no BOM.
        path.write_bytes(text.encode("gbk" if kind == "schools" else "utf-8"))
        paths.append(str(path))
    bad = tmp_path / "bad" / "needs.csv"
    bad.parent.mkdir()
    bad.write_text("class_id,subject,periods_per_week\nghost,English,1\n", encoding="utf-8")
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{server.url}/scheduler#token={server.token()}")
        # Chinese by default.
        await expect(page.locator("#county-summary")).to_contain_text("0 所学校")
        await expect(page.locator("#solve-button")).to_have_text("求解")
        await expect(page.locator("#modes-help")).to_contain_text("可调：主讲课可以挪到")

        await page.set_input_files("#import-files", str(bad))
        await page.click("#import-button")
        await expect(page.locator("#message")).to_contain_text("没有导入任何数据：1 行有错")
        await expect(page.locator("#import-result table")).to_contain_text("unknown class")

        await page.set_input_files("#import-files", paths)
        await page.click("#import-button")
        await expect(page.locator("#message")).to_contain_text("导入完成")
        await expect(page.locator("#import-encodings")).to_contain_text("schools.csv GB18030/GBK")
        await expect(page.locator("#county-summary")).to_contain_text("6 项需求")

        await page.fill("#time-limit", "5")
        await page.click("#solve-button")
        await expect(page.locator("#solve-progress")).to_be_visible()
        await expect(page.locator("#message")).to_contain_text("已排 4 / 8 节", timeout=30000)
        await expect(page.locator("#unserved")).to_contain_text(
            "把 小河教学点(xh) grade 4(xh-g4) 自己的课（周二第3节）调开，可多开 1 节"
        )

        # English behind the switch, kept across reloads.
        await page.click("#lang-switch")
        await expect(page.locator("#solve-button")).to_have_text("Solve")
        await expect(page.locator("#county-summary")).to_contain_text("6 needs")
        await expect(page.locator("#unserved")).to_contain_text(
            "moving 小河教学点(xh) grade 4(xh-g4)'s own lesson(s) (Tue period 3)"
        )

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

        # The grid as a picture: a PNG a school can print.
        async with page.expect_download() as info:
            await page.click("#picture-button")
        download = await info.value
        picture = Path(await download.path()).read_bytes()
        assert picture[:8] == b"\x89PNG\r\n\x1a\n" and len(picture) > 2000
        width, height = int.from_bytes(picture[16:20], "big"), int.from_bytes(picture[20:24], "big")
        assert width >= 1000 and height >= 100

        await expect(page.locator("#pairings")).to_contain_text("大山教学点")

        await page.click("#publish-button")
        await expect(page.locator("#message")).to_contain_text("Published plan")
        await expect(page.locator("#county-summary")).not_to_contain_text(" 0 dated lessons")

        await page.fill("#replan-date", "2025-09-08")
        await page.fill("#replan-teacher", "t-wang")
        await page.click("#replan-button")
        await expect(page.locator("#replan-result")).to_contain_text("lesson cancelled")
