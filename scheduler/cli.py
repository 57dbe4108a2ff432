"""`tongke schedule ...`: import a county, solve, explain, re-plan, publish, export."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from scheduler.db import Database
from scheduler.publicurl import read_public_url
from tongke.config import load_config


def process_started() -> float:
    """When this process started, on the `time.monotonic()` clock: `--time-limit` is the
    wall time of the whole command, interpreter start-up and imports included."""
    now = time.monotonic()
    try:
        # Field 22 of /proc/self/stat: start time in clock ticks after boot (Linux).
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return _IMPORTED
    return now - age if 0 <= age < 3600 else _IMPORTED


# The fallback where /proc is missing: as early as this module is loaded.
_IMPORTED = time.monotonic()


def _db(args: argparse.Namespace) -> Database:
    cfg = _config(args)
    return Database(cfg.resolved_database_url())


def _config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    cfg = load_config(
        args.config,
        data_dir=args.data_dir,
        database_url=args.database_url,
        public_url=getattr(args, "public_url", None),
    )
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.public_url:
        # The running server records the address browsers reach it at (scheduler.api).
        cfg.public_url = read_public_url(cfg.data_dir) or ""
    return cfg


def _common_options(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("--config", type=Path, default=default, help="TOML configuration file")
    parser.add_argument("--data-dir", type=Path, default=default, help="data directory (./data)")
    parser.add_argument("--database-url", default=default, help="SQLAlchemy URL (default: SQLite)")
    parser.add_argument(
        "--public-url",
        default=default,
        help="the server's public address for links (default: what the "
        "server in --data-dir recorded, else http://127.0.0.1:8080)",
    )


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("schedule", help="county scheduler: pair schools, solve the timetable")
    _common_options(p, None)
    # The same options after the action (`schedule import --data-dir D`); SUPPRESS keeps
    # a value given before the action when the action's parser does not see the option.
    common = argparse.ArgumentParser(add_help=False)
    _common_options(common, argparse.SUPPRESS)
    s = p.add_subparsers(dest="schedule_command", metavar="ACTION", required=True)

    c = s.add_parser(
        "import", parents=[common], help="import CSV files (a directory or files named by kind)"
    )
    c.add_argument("paths", nargs="+", type=Path)
    c.add_argument("--replace", action="store_true", help="start the county over")
    c.set_defaults(func=cmd_import)

    c = s.add_parser(
        "demo-data", parents=[common], help="write a generated sample county as CSV files"
    )
    c.add_argument("directory", type=Path)
    c.add_argument("--tier", choices=("S", "M", "L"), default="S")
    c.add_argument("--seed", type=int, default=1)
    c.set_defaults(func=cmd_demo)

    c = s.add_parser(
        "solve", parents=[common], help="solve the shared timetable and store it as a draft plan"
    )
    c.add_argument("--time-limit", type=float, default=30.0, help="seconds (default 30)")
    c.add_argument("--max-points", type=int, default=4, help="points per master lesson (4)")
    c.add_argument(
        "--mode",
        choices=("fixed", "movable"),
        default="fixed",
        help="fixed: master lessons stay put; movable: may move to free periods",
    )
    c.add_argument("--cross-county", action="store_true", help="allow pairing across counties")
    c.add_argument(
        "--fresh",
        action="store_true",
        help="ignore the published plan (by default changes to it are minimised)",
    )
    c.add_argument("--seed", type=int, default=0)
    c.add_argument(
        "--bells",
        choices=("hard", "soft"),
        default="hard",
        help="hard: a remote lesson sits inside one of the point's bell periods; soft: it may "
        "straddle a break at a cost",
    )
    c.add_argument(
        "--bell-tolerance",
        type=int,
        default=5,
        metavar="MIN",
        help="minutes a lesson may reach into a point's break (default 5)",
    )
    c.add_argument("--lang", choices=("zh", "en"), default="zh", help="language of the summary")
    c.set_defaults(func=cmd_solve)

    c = s.add_parser("explain", parents=[common], help="list needs not fully served, with reasons")
    c.add_argument("--plan", type=int, default=None)
    c.add_argument("--lang", choices=("zh", "en"), default="zh", help="中文 (default) or English")
    c.set_defaults(func=cmd_explain)

    c = s.add_parser(
        "replan", parents=[common], help="re-plan dates after an absence or a degraded link"
    )
    c.add_argument(
        "--date",
        action="append",
        required=True,
        type=dt.date.fromisoformat,
        help="YYYY-MM-DD (repeat for several days)",
    )
    c.add_argument("--absent", metavar="TEACHER_ID", default=None)
    c.add_argument("--classroom", default=None, help="point classroom whose link degraded")
    c.add_argument("--downlink", type=float, default=None, help="its downlink now, Mbit/s")
    c.add_argument("--lang", choices=("zh", "en"), default="zh", help="中文 (default) or English")
    c.set_defaults(func=cmd_replan)

    c = s.add_parser(
        "publish", parents=[common], help="publish a plan as dated lessons for the term"
    )
    c.add_argument("--plan", type=int, default=None, help="plan id (default: the latest)")
    c.set_defaults(func=cmd_publish)

    c = s.add_parser("export", parents=[common], help="export a plan as CSV")
    c.add_argument("--plan", type=int, default=None)
    c.add_argument("-o", "--output", type=Path, default=None, help="file (default: stdout)")
    c.set_defaults(func=cmd_export)

    c = s.add_parser("lessons", parents=[common], help="list published lesson instances")
    c.add_argument("--from", dest="start", type=dt.date.fromisoformat, required=True)
    c.add_argument("--to", dest="end", type=dt.date.fromisoformat, required=True)
    c.add_argument("--classroom", default=None)
    c.set_defaults(func=cmd_lessons)

    c = s.add_parser(
        "token", parents=[common], help="a scheduler token and the scheduler page link"
    )
    c.add_argument("--ttl", type=int, default=12 * 3600, help="seconds (default 12 h)")
    c.set_defaults(func=cmd_token)

    c = s.add_parser(
        "feed", parents=[common], help="feed links (iCal and JSON) for a classroom or an agent"
    )
    c.add_argument("classroom")
    c.add_argument("--agent", action="store_true", help="the id is an agent id")
    c.add_argument("--ttl", type=int, default=180 * 24 * 3600)
    c.set_defaults(func=cmd_feed)


def _files(paths: list[Path]) -> tuple[dict[str, str], dict[str, str]]:
    from scheduler.csvio import FORMATS, decode_csv

    files: dict[str, str] = {}
    encodings: dict[str, str] = {}
    for path in paths:
        items = sorted(path.glob("*.csv")) if path.is_dir() else [path]
        if path.is_dir() and not items:
            raise ValueError(f"{path}: no .csv files")
        for item in items:
            kind = item.stem
            if kind not in FORMATS:
                raise ValueError(
                    f"{item}: name the file after its kind: "
                    f"{', '.join(k + '.csv' for k in FORMATS)}"
                )
            try:
                files[kind], encodings[kind] = decode_csv(item.read_bytes())
            except UnicodeDecodeError as exc:
                raise ValueError(f"{item}: neither UTF-8 nor GBK/GB18030 text ({exc})") from None
    return files, encodings


def cmd_import(args: argparse.Namespace) -> int:
    from scheduler.csvio import import_csv

    files, encodings = _files(args.paths)
    db = _db(args)
    with db.session() as session:
        report = import_csv(session, files, replace=args.replace)
        report.encodings = encodings
    if not report.ok:
        print(f"nothing imported: {len(report.errors)} bad row(s)", file=sys.stderr)
        for err in report.errors:
            print(f"  {err}", file=sys.stderr)
        return 1
    for kind, n in report.counts.items():
        print(f"{kind:11s} {n:6d} rows  ({report.encodings.get(kind, 'UTF-8')})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from scheduler.countygen import generate

    args.directory.mkdir(parents=True, exist_ok=True)
    for kind, text in generate(args.tier, args.seed).items():
        (args.directory / f"{kind}.csv").write_text(text, encoding="utf-8")
    print(f"wrote a tier {args.tier} county (seed {args.seed}) to {args.directory}/")
    return 0


def cmd_solve(args: argparse.Namespace) -> int:
    started = process_started()
    from scheduler.problem import BellRule, Mode, Options
    from scheduler.service import check_solvable, solve_and_store

    if args.bell_tolerance < 0:
        raise ValueError("--bell-tolerance is minutes into a break: 0 or more")
    if args.time_limit <= 0:
        raise ValueError("--time-limit is seconds: more than 0")
    opts = Options(
        max_points=args.max_points,
        mode=Mode(args.mode),
        cross_county=args.cross_county,
        time_limit_s=args.time_limit,
        seed=args.seed,
        bells=BellRule(args.bells),
        bell_tolerance_min=args.bell_tolerance,
    )
    db = _db(args)
    with db.session() as session:
        check_solvable(session)
    bar = tqdm(
        total=round(args.time_limit, 1),
        unit="s",
        desc="solving",
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.0f}s {postfix}",
    )
    last: dict[str, Any] = {}
    stop = threading.Event()

    def tick() -> None:
        # The solver reports only on new solutions; a clock keeps the bar moving between.
        while not stop.wait(0.5):
            bar.n = min(bar.total, round(time.monotonic() - started, 1))
            bar.refresh()

    def progress(event: dict[str, Any]) -> None:
        last.update(event)
        if event.get("served") is not None:
            bar.set_postfix_str(
                f"served≈{event['served']} part {event['part']}/{event['parts']}", refresh=False
            )

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        with db.session() as session:
            plan, sol = solve_and_store(
                session, opts, progress, keep_published=not args.fresh, started=started
            )
    finally:
        stop.set()
        ticker.join()
        bar.n = bar.total
        bar.close()
    t = sol.terms
    wall = time.monotonic() - started
    explain_s = plan.stats.get("explain_s", 0)
    if args.lang == "zh":
        print(
            f"方案 {plan.id}：已排 {sol.served} / {sol.demand} 节（{100 * sol.served_ratio:.1f}%），"
            f"最多可排 {sol.upper_bound} 节；已排差距 {100 * sol.served_gap:.2f}%，"
            f"软约束差距 {100 * sol.soft_gap:.1f}%，加权差距 {100 * sol.gap:.2f}%"
            f"{'（最优）' if sol.optimal else ''}；贪心基线 {sol.greedy_served} 节"
        )
        print(
            f"  额外教师 {t.get('extra_teachers', 0)}，跨县 {t.get('cross_county', 0)}，"
            f"最忙教师 {t.get('max_load', 0)} 个教学点课次，调动主讲课 {t.get('moved', 0)}，"
            f"相对已发布的改动 {t.get('changes', 0)}，跨教学点课间 {t.get('off_bells', 0)}"
        )
        print(
            f"  {len(plan.unserved)} 个需求未完全满足（原因：`tongke schedule explain`）；"
            f"用时 {wall:.1f} 秒（其中解释 {explain_s:.2f} 秒）"
        )
    else:
        print(
            f"plan {plan.id}: served {sol.served} of {sol.demand} periods "
            f"({100 * sol.served_ratio:.1f}%), at most {sol.upper_bound} possible; "
            f"served gap {100 * sol.served_gap:.2f}%, soft-term gap {100 * sol.soft_gap:.1f}%, "
            f"weighted gap {100 * sol.gap:.2f}%{' (optimal)' if sol.optimal else ''}; "
            f"greedy baseline {sol.greedy_served}"
        )
        print(
            f"  extra teachers {t.get('extra_teachers', 0)}, cross-county "
            f"{t.get('cross_county', 0)}, busiest teacher {t.get('max_load', 0)} point-lessons, "
            f"moved {t.get('moved', 0)}, changes to published {t.get('changes', 0)}, "
            f"lessons across a point's break {t.get('off_bells', 0)}"
        )
        print(
            f"  {len(plan.unserved)} need(s) not fully served: `tongke schedule explain --lang "
            f"en`; {wall:.1f} s wall time ({explain_s:.2f} s explaining)"
        )
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from scheduler.service import latest_plan

    db = _db(args)
    with db.session() as session:
        plan = latest_plan(session, args.plan)
        if not plan.unserved:
            print(
                f"方案 {plan.id}：所有需求均已满足"
                if args.lang == "zh"
                else f"plan {plan.id}: every need is fully served"
            )
        for u in plan.unserved:
            if args.lang == "zh":
                print(f"{u['label']} {u['subject']}：已排 {u['served']} / {u['required']} 节")
            else:
                print(f"{u['label']} {u['subject']}: {u['served']} of {u['required']} period(s)")
            for r in u["reasons"]:
                # Plans stored by older versions hold English strings.
                print(f"  - {r if isinstance(r, str) else r[args.lang]}")
    return 0


def cmd_replan(args: argparse.Namespace) -> int:
    from scheduler.replan import replan

    db = _db(args)
    with db.session() as session:
        with tqdm(total=1, desc="re-planning", bar_format="{desc}: {elapsed}") as bar:
            report = replan(
                session,
                args.date,
                absent_teacher=args.absent,
                classroom_id=args.classroom,
                downlink_mbps=args.downlink,
            )
            bar.update()
    if args.lang == "zh":
        print(
            f"{'、'.join(report.dates)}：保留 {report.served_after} / {report.served_before} 个"
            f"教学点课次（{report.solve_s:.2f} 秒）；{len(report.changes)} 处改动："
        )
    else:
        print(
            f"served {report.served_after} of {report.served_before} point-lessons on "
            f"{', '.join(report.dates)} ({report.solve_s:.2f} s); {len(report.changes)} "
            "change(s):"
        )
    for ch in report.changes:
        text = ch.text_zh or ch.text if args.lang == "zh" else ch.text
        print(f"  {ch.date} {ch.lesson_id}  {text}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from scheduler.lessons import publish
    from scheduler.service import latest_plan

    db = _db(args)
    with db.session() as session:
        plan = latest_plan(session, args.plan)
        with tqdm(total=1, desc="publishing", bar_format="{desc}: {elapsed}") as bar:
            report = publish(session, plan.id)
            bar.update()
    print(
        f"published plan {report.plan_id}: {report.series} weekly lessons, "
        f"{report.instances} dated lessons; {len(report.changed_series)} new or changed, "
        f"{len(report.removed_series)} removed"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from scheduler.csvio import export_plan_csv
    from scheduler.service import export_rows, latest_plan

    db = _db(args)
    with db.session() as session:
        text = export_plan_csv(export_rows(session, latest_plan(session, args.plan)))
    if args.output:
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_lessons(args: argparse.Namespace) -> int:
    from scheduler.lessons import lessons_between

    db = _db(args)
    with db.session() as session:
        start = dt.datetime.combine(args.start, dt.time(0))
        end = dt.datetime.combine(args.end + dt.timedelta(days=1), dt.time(0))
        for info in lessons_between(session, start, end, classroom_id=args.classroom):
            print(
                f"{info.start:%Y-%m-%d %a %H:%M}-{info.end:%H:%M} {info.room_id} "
                f"{info.title} | master {info.master_classroom_id} | points "
                f"{';'.join(info.point_classroom_ids)}"
            )
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from tongke.tokens import Role, issue_token

    cfg = _config(args)
    token = issue_token(
        cfg.ensure_secret(),
        room="*",
        classroom="",
        role=Role.SCHEDULER,
        name="scheduler",
        ttl_s=args.ttl,
    )
    print(token)
    print(f"{cfg.base_url}/scheduler#token={token}")
    return 0


def cmd_feed(args: argparse.Namespace) -> int:
    from scheduler.feedauth import feed_token

    cfg = _config(args)
    db = _db(args)
    with db.session() as session:
        token, path = feed_token(
            session, cfg.ensure_secret(), args.classroom, agent=args.agent, ttl_s=args.ttl
        )
    print(f"{cfg.base_url}{path}.ics?token={token}")
    print(f"{cfg.base_url}{path}.json?token={token}")
    return 0
