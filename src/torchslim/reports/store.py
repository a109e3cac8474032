"""The run store: every run and its per-stage figures in one SQLite file.

Default location ``~/.torchslim/runs.db`` (``$TORCHSLIM_RUNS_DB`` overrides). WAL journal mode, and every
write happens inside one transaction, so a run killed half-way leaves the store consistent: a stage is
either fully recorded or not at all, and ``completed_stages`` tells a resumed run where to continue.

Example::

    >>> store = RunStore()                                                        # doctest: +SKIP
    >>> run = store.start_run("resnet 50% + int8", recipe={...}, meta={"threads": 1})  # doctest: +SKIP
    >>> store.record_stage(run, 0, StageMetrics("baseline", accuracy=0.927))       # doctest: +SKIP
    >>> store.finish_run(run, "finished")                                          # doctest: +SKIP
    >>> row, report = store.get_run(run)                                           # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchslim.core.errors import TorchSlimError
from torchslim.reports.schema import Report, StageMetrics

__all__ = ["RunStore", "RunRow", "default_path", "STATUSES", "SCHEMA_VERSION"]

STATUSES = ("running", "finished", "failed", "interrupted")
SCHEMA_VERSION = 1


class RunNotFound(TorchSlimError, KeyError):
    """The run id is not in the run store."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def default_path() -> Path:
    """``$TORCHSLIM_RUNS_DB`` or ``~/.torchslim/runs.db``."""
    env = os.environ.get("TORCHSLIM_RUNS_DB")
    return Path(env).expanduser() if env else Path.home() / ".torchslim" / "runs.db"


@dataclass
class RunRow:
    """One row of the ``runs`` table."""

    id: int
    created: float  # unix time
    status: str
    title: str
    recipe: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    updated: float | None = None


def _create_v1(con: sqlite3.Connection) -> None:
    con.execute(
        """CREATE TABLE IF NOT EXISTS runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            created REAL NOT NULL,
            updated REAL,
            status TEXT NOT NULL CHECK (status IN ('running','finished','failed','interrupted')),
            title TEXT NOT NULL,
            recipe TEXT NOT NULL DEFAULT '{}',
            meta TEXT NOT NULL DEFAULT '{}'
        )"""
    )
    con.execute(
        """CREATE TABLE IF NOT EXISTS stages (
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            name TEXT NOT NULL,
            metrics TEXT NOT NULL,
            UNIQUE (run_id, idx)
        )"""
    )


# version -> function that brings a store at version-1 to that version (run inside one transaction).
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _create_v1}


def _dumps(obj: Any) -> str:
    return json.dumps(obj if obj is not None else {}, sort_keys=True, default=str)


class RunStore:
    """SQLite store of runs (``runs`` table) and their stage metrics (``stages`` table).

    Args:
        path: database file (its folder is created). Default: :func:`default_path`.
        timeout: seconds to wait on a lock held by another process.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, timeout: float = 30.0) -> None:
        self.path = Path(path).expanduser() if path is not None else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA foreign_keys=ON")
            self._con.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise TorchSlimError(
                f"cannot open the run store {self.path}: {e}. If the file is not a torchslim run store, "
                "point $TORCHSLIM_RUNS_DB elsewhere or move the file away."
            ) from e

    # ------------------------------------------------------------------ plumbing
    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; any exception (KeyboardInterrupt included) rolls back."""
        self._con.execute("BEGIN IMMEDIATE")
        try:
            yield self._con
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        else:
            self._con.execute("COMMIT")

    def _migrate(self) -> None:
        with self.transaction() as con:
            con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = con.execute("SELECT version FROM schema_version").fetchone()
            current = int(row[0]) if row else 0
            if current > SCHEMA_VERSION:
                raise TorchSlimError(
                    f"run store {self.path} has schema version {current}, newer than this torchslim "
                    f"({SCHEMA_VERSION}): upgrade torchslim or use another $TORCHSLIM_RUNS_DB."
                )
            for v in range(current + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[v](con)
            if row is None:
                con.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif current != SCHEMA_VERSION:
                con.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    def schema_version(self) -> int:
        row = self._con.execute("SELECT version FROM schema_version").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writes
    def start_run(
        self, title: str, recipe: dict[str, Any] | None = None, meta: dict[str, Any] | None = None
    ) -> int:
        """Insert a run with status ``running``; returns its id."""
        now = time.time()
        with self.transaction() as con:
            cur = con.execute(
                "INSERT INTO runs (created, updated, status, title, recipe, meta) VALUES (?, ?, 'running', ?, ?, ?)",
                (now, now, str(title), _dumps(recipe), _dumps(meta)),
            )
            run_id = cur.lastrowid
        assert run_id is not None
        return int(run_id)

    def _check_run(self, con: sqlite3.Connection, run_id: int) -> None:
        if con.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
            raise RunNotFound(
                f"run {run_id} is not in the run store {self.path}: list runs with `torchslim runs`."
            )

    def record_stage(self, run_id: int, idx: int, metrics: StageMetrics) -> None:
        """Insert or replace the metrics of stage ``idx`` of run ``run_id`` (one transaction)."""
        with self.transaction() as con:
            self._check_run(con, run_id)
            con.execute(
                """INSERT INTO stages (run_id, idx, name, metrics) VALUES (?, ?, ?, ?)
                   ON CONFLICT (run_id, idx) DO UPDATE SET name = excluded.name, metrics = excluded.metrics""",
                (run_id, int(idx), metrics.name, _dumps(metrics.to_dict())),
            )
            con.execute("UPDATE runs SET updated = ? WHERE id = ?", (time.time(), run_id))

    def finish_run(self, run_id: int, status: str = "finished") -> None:
        """Set the final status: ``finished``, ``failed`` or ``interrupted`` (or back to ``running``)."""
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {STATUSES}.")
        with self.transaction() as con:
            self._check_run(con, run_id)
            con.execute("UPDATE runs SET status = ?, updated = ? WHERE id = ?", (status, time.time(), run_id))

    def update_meta(self, run_id: int, meta: dict[str, Any]) -> None:
        """Merge ``meta`` into the run's meta (e.g. versions or figures known only at the end)."""
        with self.transaction() as con:
            self._check_run(con, run_id)
            row = con.execute("SELECT meta FROM runs WHERE id = ?", (run_id,)).fetchone()
            merged = {**json.loads(row[0] or "{}"), **meta}
            con.execute(
                "UPDATE runs SET meta = ?, updated = ? WHERE id = ?", (_dumps(merged), time.time(), run_id)
            )

    # ------------------------------------------------------------------ reads
    @staticmethod
    def _row(r: tuple[Any, ...]) -> RunRow:
        return RunRow(
            id=int(r[0]),
            created=float(r[1]),
            updated=r[2],
            status=r[3],
            title=r[4],
            recipe=json.loads(r[5] or "{}"),
            meta=json.loads(r[6] or "{}"),
        )

    _COLS = "id, created, updated, status, title, recipe, meta"

    def list_runs(self, limit: int = 50) -> list[RunRow]:
        """The most recent runs first."""
        rows = self._con.execute(
            f"SELECT {self._COLS} FROM runs ORDER BY id DESC LIMIT ?", (int(limit),)
        ).fetchall()
        return [self._row(r) for r in rows]

    def completed_stages(self, run_id: int) -> list[StageMetrics]:
        """Recorded stages of a run, in stage order (what a resumed run can skip)."""
        rows = self._con.execute(
            "SELECT metrics FROM stages WHERE run_id = ? ORDER BY idx", (run_id,)
        ).fetchall()
        return [StageMetrics.from_dict(json.loads(r[0])) for r in rows]

    def get_run(self, run_id: int) -> tuple[RunRow, Report]:
        """The run's row and its :class:`Report` (meta = the run's meta, plus ``recipe``, ``status``, ``run_id``)."""
        r = self._con.execute(f"SELECT {self._COLS} FROM runs WHERE id = ?", (run_id,)).fetchone()
        if r is None:
            raise RunNotFound(
                f"run {run_id} is not in the run store {self.path}: list runs with `torchslim runs`."
            )
        row = self._row(r)
        meta = {**row.meta, "run_id": row.id, "status": row.status, "recipe": row.recipe}
        return row, Report(title=row.title, stages=self.completed_stages(run_id), meta=meta)
