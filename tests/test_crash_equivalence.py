"""Crash equivalence: `paperbot run` SIGKILLed at named points and at random instants, restarted until it
finishes, ends with the book of a run that was never interrupted.

The daemon trades the bundled model on the bundled equities (2016-01 and 2016-02, about 150 fills) with
the replay feed at full speed, the simulated broker and SQLite, each run a real subprocess. Kills:

* named points (tests/crash_runner.py wraps the real functions; the process SIGKILLs itself at the n-th
  occurrence): ``intent``, ``accepted``, ``fill-pending``, ``fill``, ``migration``;
* ``random``: the plain daemon, killed a random time after it logged ``started`` (while it trades);
* ``random-start``: the plain daemon, killed a random time after it opened the database (while it
  migrates, opens the book and the run, restores, reconciles and warms up: the imports before are inert).

Kills run in chains: a fresh database, up to seven kills one after the other (each restart continues the
book the last one left), then a run to the end; then the chain's database is compared with the
uninterrupted run's, row for row over SQL: fills, orders, positions, the equity curve (cash), trading
states and their events, the last bars, risk decisions and predictions.

PAPERBOT_CRASH_KILLS sets how many kills (5 in the suite; 40 for the full run), PAPERBOT_CRASH_SEED the
seed of the n's and the delays (printed). `db upgrade` itself killed at random instants is
tests/test_migrations.py (PAPERBOT_MIGRATION_KILLS); here ``migration`` kills the daemon's own start-up
migration and checks that the run still ends equal.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from helpers import REPO

SPAN_START = datetime(2016, 1, 1, tzinfo=UTC)
SPAN_END = datetime(2016, 3, 1, tzinfo=UTC)
# The data files are cut to start here: the windows warm up on the same bars as with the full files, and
# every start reads 7 months instead of 23 years (a second less per start on a busy core).
DATA_FROM = "2015-07-01"
SYMBOLS = ("SPY", "AAPL", "IBM")
CHAIN = 7  # kills per database
DEFAULT_KILLS = 5
DEFAULT_SEED = 20261202
# The suite's first kills cover one of each kind; later ones cycle. Within a chain they run in the order
# of KIND_ORDER: a migration only happens on a fresh database, and a random kill may let the run finish.
CYCLE = ("intent", "accepted", "fill", "random", "fill-pending", "migration", "random-start")
KIND_ORDER = ("migration", "intent", "accepted", "fill-pending", "fill", "random-start", "random")
MAX_N = 8  # occurrences per named point per process: a chain of seven stays well inside the span
MIGRATION_OPS = 24  # schema operations of an upgrade from nothing (tests/test_migrations.py)
STARTED = b'"event": "started"'
STOPPED = b'"event": "stopped"'  # logged once the run row is closed
PROCESS_TIMEOUT = 180.0

Book = dict[str, list[tuple[object, ...]]]  # table name to rows


@dataclass(frozen=True)
class Kill:
    """One planned kill: a crash_runner point with its occurrence, or a random kind with its fraction
    (of the start-up after the database opens for random-start, of the trading left for random)."""

    point: str
    n: int = 0
    fraction: float = 0.0
    retry: bool = False  # a random kill that came after the run's end, again on a fresh database

    def label(self) -> str:
        """For messages: `intent#3`, `random@0.41`."""
        return f"{self.point}#{self.n}" if self.n else f"{self.point}@{self.fraction:.2f}"


@dataclass
class Chain:
    """What happened to one database: the kills that landed, the ones that did not."""

    kills: list[Kill] = field(default_factory=list)
    missed: list[Kill] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)
    phases: list[str] = field(default_factory=list)  # where each kill landed, see `attempt`
    text_only: int = 0  # risk decisions equal by value, written with other trailing zeros


@dataclass(frozen=True)
class Reference:
    """The uninterrupted run: its database, how long it took from opening the database to `started`,
    and from there to `stopped`."""

    db: Path
    start_s: float
    trade_s: float


def plan(kills: int, seed: int) -> list[list[Kill]]:
    """The kills, in chains of CHAIN, each chain in KIND_ORDER."""
    rng = random.Random(seed)
    planned = []
    for i in range(kills):
        point = CYCLE[i % len(CYCLE)]
        if point.startswith("random"):
            planned.append(Kill(point, fraction=rng.random()))
        else:
            planned.append(Kill(point, rng.randint(1, MIGRATION_OPS if point == "migration" else MAX_N)))
    chains = [planned[i : i + CHAIN] for i in range(0, len(planned), CHAIN)]
    return [sorted(chain, key=lambda k: KIND_ORDER.index(k.point)) for chain in chains]


def write_config(root: Path, data: Path, db: Path) -> Path:
    """The bundled config.toml with its database, data and model paths pointed here, speed 0 and an end."""
    text = (REPO / "config.toml").read_text(encoding="utf-8")
    replacements = {
        'database_url = "sqlite:///var/paperbot.sqlite"': f'database_url = "sqlite:///{db}"',
        'data_dir = "data/equities-1h"': f'data_dir = "{data}"',
        'model_dir = "models/lstm-equities"': f'model_dir = "{REPO / "models" / "lstm-equities"}"',
        "speed = 720000": "speed = 0",
        '# end = "2021-04-01T00:00:00Z"': f'end = "{SPAN_END.isoformat()}"',
        'start = "2016-01-01T00:00:00Z"': f'start = "{SPAN_START.isoformat()}"',
    }
    for old, new in replacements.items():
        assert text.count(old) == 1, f"config.toml changed: {old!r} is not there once"
        text = text.replace(old, new)
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.toml"
    config.write_text(text, encoding="utf-8")
    return config


def cut_data(target: Path) -> Path:
    """The bundled CSVs from DATA_FROM on."""
    target.mkdir(parents=True, exist_ok=True)
    for symbol in SYMBOLS:
        lines = (REPO / "data" / "equities-1h" / f"{symbol}.csv").read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines[1:] if line[: len(DATA_FROM)] >= DATA_FROM]
        (target / f"{symbol}.csv").write_text("\n".join([lines[0], *kept]) + "\n", encoding="utf-8")
    return target


def spawn(args: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    """A subprocess in the repository root, stdout and stderr into `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(list(args), cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


def daemon(config: Path) -> list[str]:
    """The plain daemon's command line."""
    return [sys.executable, "-m", "bot", "-c", str(config), "run"]


def wait_for(proc: subprocess.Popen[bytes], log: Path, marker: bytes = STARTED) -> bool:
    """Wait until the daemon logged `marker` (True) or exited without it (False); reads the log as it
    grows."""
    deadline = time.monotonic() + PROCESS_TIMEOUT
    tail = b""
    with log.open("rb") as handle:
        while time.monotonic() < deadline:
            exited = proc.poll() is not None
            tail = tail[-len(marker) :] + handle.read()
            if marker in tail:
                return True
            if exited:
                return False
            time.sleep(0.002)
    raise AssertionError(f"no {marker!r} within {PROCESS_TIMEOUT} s: {log}")


def wait_for_open(proc: subprocess.Popen[bytes], db: Path) -> bool:
    """Wait until the process holds the database file open (True) or exited (False)."""
    fds = Path(f"/proc/{proc.pid}/fd")
    deadline = time.monotonic() + PROCESS_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if any(fd.readlink() == db for fd in fds.iterdir()):
                return True
        except FileNotFoundError:  # an fd closed while we looked, or the process is gone
            pass
        if proc.poll() is not None:
            return False
        time.sleep(0.001)
    raise AssertionError(f"the database was not opened within {PROCESS_TIMEOUT} s")


def finish(proc: subprocess.Popen[bytes], log: Path) -> int:
    """The exit code; a process that hangs is killed and fails the test."""
    try:
        return proc.wait(timeout=PROCESS_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"still running after {PROCESS_TIMEOUT} s: {log}") from None


def progress(db: Path) -> float:
    """How much of the span the book has handled (0 on a fresh database)."""
    if not db.exists():
        return 0.0
    with _connect(db) as connection:
        try:
            (last,) = connection.execute("SELECT max(last_ts) FROM market_state").fetchone()
        except sqlite3.OperationalError:  # not migrated yet
            return 0.0
    if last is None:
        return 0.0
    done = datetime.fromisoformat(last).replace(tzinfo=UTC) - SPAN_START
    return min(1.0, max(0.0, done / (SPAN_END - SPAN_START)))


def run_rows(db: Path) -> list[str]:
    """The statuses of the runs rows, oldest first (none on a fresh database)."""
    if not db.exists():
        return []
    with _connect(db) as connection:
        try:
            return [status for (status,) in connection.execute("SELECT status FROM runs ORDER BY id")]
        except sqlite3.OperationalError:  # not migrated yet
            return []


IN_RUN, BEFORE_RUN, AFTER_RUN = "in its run", "before its run row", "after its run closed"


def attempt(kill: Kill, config: Path, db: Path, ref: Reference, log: Path) -> tuple[bool, float, str]:
    """Run one kill's process: killed by SIGKILL or not, the delay in seconds for the random kinds, and
    where the kill landed: IN_RUN (the run row left open), BEFORE_RUN (no row yet: in the migration or
    early in the start-up) or AFTER_RUN (the run had just closed its row as completed)."""
    delay = 0.0
    before = len(run_rows(db))
    if kill.n:
        proc = spawn([sys.executable, "-m", "tests.crash_runner", kill.point, str(kill.n), "--",
                      "-c", str(config), "run"], log)  # fmt: skip
    else:
        left = 1.0 - progress(db)
        proc = spawn(daemon(config), log)
        if kill.point == "random-start":
            delay = kill.fraction * ref.start_s
            if wait_for_open(proc, db):
                time.sleep(delay)
        else:
            delay = kill.fraction * ref.trade_s * left
            if wait_for(proc, log):
                time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    code = finish(proc, log)
    if code not in (0, -signal.SIGKILL):
        raise AssertionError(f"{kill.label()}: exit code {code}:\n{log.read_text()[-3000:]}")
    after = run_rows(db)
    phase = BEFORE_RUN if len(after) == before else IN_RUN if after[-1] == "running" else AFTER_RUN
    return code == -signal.SIGKILL, delay, phase


def _connect(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True)


# The rows that must be equal, as SQL over either database (one book in each). Money and times are text
# on SQLite (exact decimals, ISO times), so equal rows are equal values.
BOOK_QUERIES = {
    "fills": "SELECT broker_fill_id, client_order_id, strategy, symbol, side, qty, price, commission, ts"
    " FROM fills ORDER BY ts, symbol, broker_fill_id",
    "orders": "SELECT client_order_id, strategy, symbol, side, qty, bar_ts, status, broker_order_id,"
    " filled_qty, avg_fill_price, reason FROM orders ORDER BY bar_ts, client_order_id",
    "positions": "SELECT symbol, qty, avg_price FROM positions ORDER BY symbol",
    "cash": "SELECT ts, cash, positions_value, equity, peak_equity FROM equity_snapshots"
    " WHERE kind = 'bar' ORDER BY ts DESC, id DESC LIMIT 1",
    "equity_curve": "SELECT ts, cash, positions_value, equity, peak_equity FROM equity_snapshots"
    " WHERE kind = 'bar' ORDER BY ts, id",
    "trading_states": "SELECT scope, state, reason, equity_peak, cause, day_start, day_equity, event_id"
    " FROM trading_states ORDER BY scope",
    "trading_state_events": "SELECT ts, scope, previous, state, source, reason, equity"
    " FROM trading_state_events ORDER BY ts, id",
    "market_state": "SELECT symbol, timeframe, last_ts, last_close FROM market_state ORDER BY symbol",
    "risk_decisions": "SELECT strategy, symbol, bar_ts, side, requested_qty, approved_qty, outcome, reason,"
    " checks_json FROM risk_decisions ORDER BY bar_ts, symbol, id",
    "predictions": "SELECT strategy, symbol, bar_ts, horizon, predicted_return, target_weight"
    " FROM predictions ORDER BY bar_ts, symbol, horizon",
}
REPEATS = {
    "client_order_id in orders": "SELECT client_order_id FROM orders GROUP BY 1 HAVING count(*) > 1",
    "client_order_id in fills": "SELECT client_order_id FROM fills GROUP BY 1 HAVING count(*) > 1",
    "broker_fill_id in fills": "SELECT broker_fill_id FROM fills GROUP BY 1 HAVING count(*) > 1",
}


def _checks(text: str) -> tuple[tuple[tuple[str, object], ...], ...]:
    """A decision's checks_json by value: a quantity is a number, whatever its trailing zeros.

    A restarted run writes `"qty": "27.0000000000"` where an uninterrupted one writes `"qty": "27"`: its
    positions come back from the database at stored precision. Same number, other text (reported in the
    summary line, and in RELIABILITY.md)."""
    return tuple(
        tuple(sorted((k, Decimal(v) if k == "qty" else v) for k, v in check.items()))
        for check in json.loads(text)
    )


def book(db: Path) -> Book:
    """Every compared table of a database (risk decisions' checks by value, see `_checks`)."""
    with _connect(db) as connection:
        rows = {name: connection.execute(sql).fetchall() for name, sql in BOOK_QUERIES.items()}
    rows["risk_decisions"] = [(*r[:-1], _checks(r[-1])) for r in rows["risk_decisions"]]
    return rows


def text_only(ref: Path, db: Path) -> int:
    """Risk decisions whose checks_json text differs from the uninterrupted run's though their values
    are equal."""
    sql = BOOK_QUERIES["risk_decisions"]
    with _connect(ref) as a, _connect(db) as b:
        pairs = zip(a.execute(sql).fetchall(), b.execute(sql).fetchall(), strict=True)
        return sum(x[-1] != y[-1] for x, y in pairs)


def differences(expected: Book, got: Book) -> str:
    """A readable diff: per table, the counts and the first rows only one side has."""
    lines = []
    for name in BOOK_QUERIES:
        if expected[name] == got[name]:
            continue
        lost = [r for r in expected[name] if r not in got[name]][:3]
        extra = [r for r in got[name] if r not in expected[name]][:3]
        lines.append(f"{name}: {len(expected[name])} rows uninterrupted, {len(got[name])} after the kills")
        lines.extend(f"  only uninterrupted: {r}" for r in lost)
        lines.extend(f"  only after kills:   {r}" for r in extra)
        if not lost and not extra:
            lines.append("  same rows, other order or multiplicity")
    return "\n".join(lines)


def check_chain(db: Path, ref: Reference, chain: Chain, seed: int) -> None:
    """The chain's book equals the uninterrupted one; nothing repeats; every killed run is closed as
    killed by the next start."""
    where = f"seed {seed}, kills {[k.label() for k in chain.kills]}, delays {chain.delays}"
    expected, got = book(ref.db), book(db)
    diff = differences(expected, got)
    assert not diff, f"a restarted run differs ({where}):\n{diff}"
    with _connect(db) as connection:
        for what, sql in REPEATS.items():
            assert connection.execute(sql).fetchall() == [], f"{what} repeats ({where})"
        statuses = Counter(status for (status,) in connection.execute("SELECT status FROM runs"))
        (last,) = connection.execute("SELECT status FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    assert last == "completed", (statuses, where)
    assert set(statuses) <= {"killed", "completed"}, (statuses, where)
    # Each run left open by a kill, and only those, was closed as killed by the next start.
    assert statuses["killed"] == chain.phases.count(IN_RUN), (statuses, chain.phases, where)
    assert statuses["completed"] == 1 + chain.phases.count(AFTER_RUN), (statuses, chain.phases, where)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the cut data."""
    root = tmp_path_factory.mktemp("crash")
    cut_data(root / "data")
    return root


@pytest.fixture(scope="module")
def reference(project: Path) -> Reference:
    """The uninterrupted run, timed: seconds from opening the database to `started` (a fresh one: the
    migration included), seconds from there to `stopped`."""
    db = project / "reference.sqlite"
    config = write_config(project / "reference", project / "data", db)
    log = project / "reference.log"
    proc = spawn(daemon(config), log)
    assert wait_for_open(proc, db), log.read_text()[-3000:]
    began = time.monotonic()
    assert wait_for(proc, log), log.read_text()[-3000:]
    started = time.monotonic()
    assert wait_for(proc, log, STOPPED), log.read_text()[-3000:]
    stopped = time.monotonic()
    assert finish(proc, log) == 0, log.read_text()[-3000:]
    fills = book(db)["fills"]
    assert len(fills) > 100, "the span should trade: the kills need fills and orders to land on"
    return Reference(db, started - began, stopped - started)


def run_chains(project: Path, ref: Reference, chains: list[list[Kill]], seed: int) -> Iterator[Chain]:
    """Each planned chain on a fresh database, killed, restarted, run to the end and compared."""
    for c, planned in enumerate(chains):
        root = project / f"chain{c}"
        db = root / "db.sqlite"
        config = write_config(root, project / "data", db)
        chain = Chain()
        pending = list(planned)
        while pending:
            kill = pending.pop(0)
            killed, delay, phase = attempt(
                kill, config, db, ref, root / f"{len(chain.kills) + len(chain.missed)}.log"
            )
            if kill.n:
                assert killed, f"{kill.label()} never happened (seed {seed}): {root}"
                # A named point lies inside an open run; the migration comes before the run row.
                assert phase == (BEFORE_RUN if kill.point == "migration" else IN_RUN), (kill, phase)
            if not killed:  # a random kill after the end: the run finished by itself
                chain.missed.append(kill)
                break
            chain.kills.append(kill)
            chain.delays.append(round(delay, 3))
            chain.phases.append(phase)
        if not chain.missed:  # else the missed kill's run finished the span already
            log = root / "final.log"
            assert finish(spawn(daemon(config), log), log) == 0, log.read_text()[-3000:]
        check_chain(db, ref, chain, seed)
        chain.text_only = text_only(ref.db, db)
        if chain.missed and not chain.missed[-1].retry:
            # Earlier kills in the chain may have left it too little of the run to land in: once more
            # where the whole run lies ahead (else a short default plan could test named points only).
            pending.insert(0, replace(chain.missed[-1], retry=True))
        if pending:  # kills planned after a missed random one: on a fresh database
            chains.append(pending)
        yield chain


def summary(chains: Sequence[Chain], seed: int, ref: Reference) -> str:
    """One line for RELIABILITY.md."""
    landed = Counter(k.point for chain in chains for k in chain.kills)
    missed = Counter(k.point for chain in chains for k in chain.missed)
    phases = {
        point: Counter(
            ph for c in chains for k, ph in zip(c.kills, c.phases, strict=True) if k.point == point
        )
        for point in ("random-start", "random")
    }

    def where(point: str) -> str:
        counts = [f"{n} {phase}" for phase, n in sorted(phases[point].items())] if point in phases else []
        if missed[point]:
            counts.append(f"{missed[point]} too late: the run had ended")
        return f" ({', '.join(counts)})" if counts else ""

    points = ", ".join(f"{p} {landed[p]}{where(p)}" for p in KIND_ORDER if landed[p] or missed[p])
    fills = len(book(ref.db)["fills"])
    decisions = len(book(ref.db)["risk_decisions"])
    text = ", ".join(str(c.text_only) for c in chains)
    return (
        f"crash equivalence, seed {seed}: {sum(landed.values())} kills ({points}) in {len(chains)} chain(s);"
        f" every chain ended equal to the uninterrupted run ({fills} fills); risk decisions whose"
        f" checks_json differs only in trailing zeros, per chain: {text} of {decisions}"
    )


@pytest.mark.slow
def test_killed_and_restarted_runs_end_with_the_uninterrupted_book(
    project: Path, reference: Reference, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL at every named point and at random instants, restart until done: the same book."""
    kills = int(os.environ.get("PAPERBOT_CRASH_KILLS", str(DEFAULT_KILLS)))
    seed = int(os.environ.get("PAPERBOT_CRASH_SEED", str(DEFAULT_SEED)))
    planned = plan(kills, seed)
    chains = list(run_chains(project, reference, planned, seed))
    line = summary(chains, seed, reference)
    with capsys.disabled():
        print(f"\n{line}")
    # Named kills always land (run_chains checks each); a random one may come after the run's end, but
    # not all of them, or the harness would only be testing named points.
    landed = sum(k.point.startswith("random") for c in chains for k in c.kills)
    assert landed or not any(k.point.startswith("random") for c in planned for k in c), line
