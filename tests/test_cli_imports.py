"""The commands that need no model load no model: `--help`, the reports and the operator's halt and resume
never import torch (over a second of start-up), nor the drift, venue, scheduler or migration libraries.

Each command runs in one fresh interpreter, in turn, against an upgraded database; after each, the child
reports which of those libraries `sys.modules` holds. How fast they start is for the benchmarks to say."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import REPO

from bot.store.db import upgrade

HEAVY = ("torch", "river", "alpaca", "pandas", "scipy", "sklearn", "apscheduler", "alembic")

# In this order: `halt` opens the daemon's book that the reports then read.
COMMANDS = [
    ["--help"],
    ["status", "--help"],
    ["halt"],
    ["resume"],
    ["status"],
    ["status", "--format", "json"],
    ["trades"],
    ["trades", "--format", "csv"],
    ["alerts", "--format", "json"],
    ["risk"],
]

CHILD = """
import contextlib, io, json, sys

from bot.cli import main

heavy, commands = json.loads(sys.argv[1]), json.loads(sys.argv[2])
seen = []
for argv in commands:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = main(["-c", "config.toml", *argv])
        except SystemExit as exc:  # argparse ends --help this way
            code = exc.code
    seen.append({"argv": argv, "code": code, "loaded": [n for n in heavy if n in sys.modules],
                 "output": out.getvalue()[-400:]})
print(json.dumps(seen))
"""


def test_commands_without_a_model_never_import_torch(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(db_url)  # as `paperbot db upgrade` leaves it: the commands find the schema current
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(HEAVY), json.dumps(COMMANDS)],
        capture_output=True,
        text=True,
        cwd=REPO,  # the bundled config.toml, with the database from the environment
        env={**os.environ, "PAPERBOT_DATABASE_URL": db_url},
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    runs = json.loads(proc.stdout)
    assert [run["argv"] for run in runs] == COMMANDS
    for run in runs:
        assert run["code"] == 0, run
        assert run["loaded"] == [], f"`paperbot {' '.join(run['argv'])}` imported {run['loaded']}"
