"""RunStore: round trip, upsert, resume list, and consistency after an interrupted transaction."""

from __future__ import annotations

import sqlite3

import pytest

from torchslim.reports.schema import StageMetrics
from torchslim.reports.store import SCHEMA_VERSION, RunStore, default_path


def test_round_trip_and_upsert(tmp_path):
    db = tmp_path / "deep" / "runs.db"
    with RunStore(db) as store:
        rid = store.start_run(
            "resnet 50%", recipe={"stages": [{"type": "channel_prune"}]}, meta={"threads": 1}
        )
        store.record_stage(rid, 0, StageMetrics("baseline", accuracy=0.927, params=100, latency_ms_ort=21.4))
        store.record_stage(rid, 1, StageMetrics("prune", accuracy=0.5))
        store.record_stage(rid, 1, StageMetrics("prune", accuracy=0.925, extra={"kept": [16, 32]}))  # upsert
        assert [s.accuracy for s in store.completed_stages(rid)] == [0.927, 0.925]
        store.finish_run(rid, "finished")
        with pytest.raises(ValueError, match="not one of"):
            store.finish_run(rid, "done")
    with RunStore(db) as store:  # reopen: everything persisted
        row, report = store.get_run(rid)
        assert row.status == "finished" and row.recipe["stages"][0]["type"] == "channel_prune"
        assert report.title == "resnet 50%" and report.meta["threads"] == 1
        assert [s.name for s in report.stages] == ["baseline", "prune"]
        assert report.stages[1].extra == {"kept": [16, 32]}
        assert [r.id for r in store.list_runs()] == [rid]
        assert store.schema_version() == SCHEMA_VERSION
        with pytest.raises(KeyError, match="not in the run store"):
            store.get_run(rid + 99)


def test_interrupted_transaction_leaves_store_consistent(tmp_path):
    db = tmp_path / "runs.db"
    store = RunStore(db)
    rid = store.start_run("run", {}, {})
    store.record_stage(rid, 0, StageMetrics("baseline", accuracy=0.9))
    with pytest.raises(KeyboardInterrupt):
        with store.transaction() as con:
            con.execute("INSERT INTO stages (run_id, idx, name, metrics) VALUES (?, 1, 'half', '{}')", (rid,))
            con.execute("UPDATE runs SET status = 'failed' WHERE id = ?", (rid,))
            raise KeyboardInterrupt  # the process is interrupted mid-transaction
    store.close()
    with RunStore(db) as again:
        row, report = again.get_run(rid)
        assert row.status == "running"  # the update was rolled back with the insert
        assert [s.name for s in report.stages] == ["baseline"]
        again.finish_run(rid, "interrupted")
        assert again.list_runs()[0].status == "interrupted"
    # the database file itself is intact
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_default_path_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHSLIM_RUNS_DB", str(tmp_path / "x" / "r.db"))
    assert default_path() == tmp_path / "x" / "r.db"
    with RunStore() as s:
        assert s.path == tmp_path / "x" / "r.db" and s.path.exists()


def test_foreign_file_gives_clear_error(tmp_path):
    bad = tmp_path / "runs.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    from torchslim.core.errors import TorchSlimError

    with pytest.raises(TorchSlimError, match="TORCHSLIM_RUNS_DB"):
        RunStore(bad)
