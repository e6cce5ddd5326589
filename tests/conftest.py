"""Shared fixtures.

Database fixtures run each test on SQLite and, when PAPERBOT_TEST_POSTGRES_URL is set, on PostgreSQL:
- `db_url`: URL of an empty database (a fresh SQLite file, or a fresh PostgreSQL schema dropped afterwards);
- `db_engine`: an Engine on `db_url` already migrated to the latest revision;
- `db_session`: a Session on `db_engine`, closed afterwards.

`one_torch_thread` runs a module's torch work on one thread, as the daemon does; `crypto_model` is a small
LSTM trained once per session (`paperbot train`) on the two crypto pairs of tests/data.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import write_crypto_project
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from bot.cli import main
from bot.store.db import make_engine, session_factory, upgrade

POSTGRES_URL_ENV = "PAPERBOT_TEST_POSTGRES_URL"


def _postgres_schema_url(base_url: str) -> Iterator[str]:
    """Yield `base_url` confined to a new schema of its own, then drop that schema with its contents.

    search_path makes every unqualified name (our tables, Alembic's version table) live in the schema, so
    tests cannot see each other's tables and nothing ever touches `public`.
    """
    schema = f"t_{uuid.uuid4().hex}"
    # NullPool: the admin connection must not linger in a pool between create and drop.
    admin = create_engine(base_url, poolclass=NullPool)
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
        with admin.begin() as connection:
            # A test that leaked an open transaction would make DROP wait forever; fail loudly instead.
            connection.execute(text("SET LOCAL lock_timeout = '10s'"))
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of an empty database on each backend; the PostgreSQL run is skipped without a server URL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'paperbot.sqlite'}"
        return
    base_url = os.environ.get(POSTGRES_URL_ENV)
    if not base_url:
        pytest.skip(f"{POSTGRES_URL_ENV} is not set")
    yield from _postgres_schema_url(base_url)


@pytest.fixture
def db_engine(db_url: str) -> Iterator[Engine]:
    """An Engine on `db_url` with the schema migrated to head; disposed (connections closed) afterwards."""
    upgrade(db_url)
    engine = make_engine(db_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def db_session(db_engine: Engine) -> Iterator[Session]:
    """A Session on `db_engine` (expire_on_commit=False, as the daemon uses); closed afterwards."""
    with session_factory(db_engine)() as session:
        yield session


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """As the daemon runs (daemon.torch_threads = 1): tiny models only slow down with more threads, a lot
    on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def crypto_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train once (`paperbot train`) on the crypto bars before the replay start; the model folder."""
    root = tmp_path_factory.mktemp("model")
    model_dir = root / "models" / "lstm-crypto"
    config = write_crypto_project(root, f"sqlite:///{root / 'unused.sqlite'}", model_dir)
    assert main(["-c", str(config), "train"]) == 0
    assert (model_dir / "0001" / "model.pt").is_file()
    return model_dir
