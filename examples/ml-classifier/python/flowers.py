"""The generated training table (sql/create_flowers.sql), created on first use."""
from pathlib import Path

from mxcp.runtime import db

TABLES = ("flowers",)
FEATURES = ["petal_length", "petal_width"]
CREATE_FLOWERS = Path(__file__).resolve().parent.parent / "sql" / "create_flowers.sql"


def ensure_flowers() -> None:
    db.execute(CREATE_FLOWERS.read_text(encoding="utf-8"))
