"""The generated sales table, created on first use (sql/create_sales.sql) so the example needs no setup step."""
from pathlib import Path

from mxcp.runtime import db

TABLES = ("sales",)
CREATE_SALES = Path(__file__).resolve().parent.parent / "sql" / "create_sales.sql"


def ensure_sales() -> None:
    db.execute(CREATE_SALES.read_text(encoding="utf-8"))
