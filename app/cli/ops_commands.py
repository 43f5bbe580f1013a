"""`pe-search backup` and `restore`: the whole data dir and database, copied consistently while a server runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from app.cli.args import print_json
from app.settings import Settings

if TYPE_CHECKING:
    from app.services.backup_manifest import Summary


def cmd_backup(args: argparse.Namespace, settings: Settings) -> int:
    from app.services.backup import backup

    summary = backup(settings, Path(args.dest))
    _report(summary, as_json=args.json)
    return 0


def cmd_restore(args: argparse.Namespace, settings: Settings) -> int:
    from app.services.backup import restore

    summary = restore(settings, Path(args.src), force=args.force)
    _report(summary, as_json=args.json)
    return 0


def _report(summary: Summary, *, as_json: bool) -> None:
    if as_json:
        print_json(summary.to_dict())
    else:
        print(summary.line())


def add_ops_commands(sub: argparse._SubParsersAction) -> None:
    backup = sub.add_parser(
        "backup",
        help="copy the index checkpoints, the database and the uploads into DEST, consistently, while pe-search runs",
    )
    backup.add_argument("dest", help="a new or empty folder")
    backup.add_argument("--json", action="store_true", help="print the summary as JSON")
    backup.set_defaults(func=cmd_backup)

    restore = sub.add_parser(
        "restore", help="verify a backup, then put it into an empty data dir (and database); stop pe-search first"
    )
    restore.add_argument("src", help="a folder `pe-search backup` wrote")
    restore.add_argument(
        "--force", action="store_true", help="replace the data dir's database, indexes and uploads if it has any"
    )
    restore.add_argument("--json", action="store_true", help="print the summary as JSON")
    restore.set_defaults(func=cmd_restore)
