"""Database reload: run a payload with exclusive access to the DuckDB file, then the runtime starts again."""
from mxcp.runtime import db, reload_duckdb


def _database_path() -> str:
    return db.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()")[0]["path"]


def rebuild_snapshot(label: str) -> dict:
    path = _database_path()

    def rebuild() -> None:
        # All connections are closed here: an external tool could own the file now. We write it directly.
        import duckdb

        conn = duckdb.connect(path)
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS snapshots (label VARCHAR, taken_at TIMESTAMP)")
            conn.execute("INSERT INTO snapshots VALUES (?, current_timestamp)", [label])
        finally:
            conn.close()

    reload_duckdb(payload_func=rebuild, description=f"snapshot {label}")
    return {"status": "scheduled", "label": label}


def snapshot_labels() -> list:
    exists = db.execute(
        "SELECT count(*) AS n FROM information_schema.tables WHERE table_name = 'snapshots'"
    )[0]["n"]
    if not exists:
        return []
    return [row["label"] for row in db.execute("SELECT label FROM snapshots ORDER BY taken_at, label")]
