from __future__ import annotations

import argparse
import csv
import datetime as dt
from pathlib import Path

import pytest

from scheduler import cli


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="tongke")
    sub = parser.add_subparsers(dest="command", required=True)
    cli.register(sub)
    args = parser.parse_args(list(argv))
    return int(args.func(args))


def test_cli_from_demo_data_to_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ("schedule", "--data-dir", str(tmp_path / "data"))
    assert run(*base, "demo-data", str(tmp_path / "csv"), "--tier", "S", "--seed", "2") == 0
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "needs.csv").write_text("class_id,subject,periods_per_week\nx,Art,1\n")
    assert run(*base, "import", str(tmp_path / "bad")) == 1
    assert "needs.csv line 2, column class_id: unknown class 'x'" in capsys.readouterr().err
    assert run(*base, "import", str(tmp_path / "csv")) == 0
    assert run(*base, "solve", "--time-limit", "5") == 0
    out = capsys.readouterr()
    assert "已排" in out.out and "solving" in out.err  # the tqdm bar goes to stderr
    assert run(*base, "explain") == 0
    assert "  - " in capsys.readouterr().out
    assert run(*base, "publish") == 0
    assert "dated lessons" in capsys.readouterr().out
    assert run(*base, "export", "-o", str(tmp_path / "plan.csv")) == 0
    rows = list(csv.DictReader((tmp_path / "plan.csv").open()))
    assert rows and {"lesson_id", "weekday", "start", "end", "points"} <= set(rows[0])
    assert run(*base, "feed", rows[0]["master_classroom"]) == 0
    assert "/api/schedule/feeds/" in capsys.readouterr().out
    # The first lesson's teacher is absent on its day in the term's first week.
    term = next(csv.DictReader((tmp_path / "csv" / "calendar.csv").open()))
    day = dt.date.fromisoformat(term["start"]) + dt.timedelta(days=int(rows[0]["weekday"]) - 1)
    assert run(*base, "replan", "--date", day.isoformat(), "--absent", rows[0]["teacher"]) == 0
    out = capsys.readouterr().out
    assert f"{day}：保留 " in out and "请假" in out


def test_options_after_the_action_and_the_servers_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from scheduler.publicurl import write_public_url

    data = str(tmp_path / "data")
    assert run("schedule", "demo-data", str(tmp_path / "csv"), "--data-dir", data) == 0
    assert run("schedule", "import", str(tmp_path / "csv"), "--data-dir", data) == 0
    assert (tmp_path / "data" / "tongke.db").exists()
    capsys.readouterr()
    # What `tongke serve --public-url ...` recorded in its data directory.
    write_public_url(tmp_path / "data", "https://tongke.example.cn")
    assert run("schedule", "token", "--data-dir", data) == 0
    assert "https://tongke.example.cn/scheduler#token=" in capsys.readouterr().out
    assert run("schedule", "--data-dir", data, "token", "--public-url", "http://10.0.0.5:8080") == 0
    assert "http://10.0.0.5:8080/scheduler#token=" in capsys.readouterr().out
