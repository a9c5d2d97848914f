"""The demo table the database tools read; created on first use, so the example needs no setup step."""
from mxcp.runtime import db

USERS = [
    (1, "Alice", "alice@example.com", "engineering"),
    (2, "Bob", "bob@example.com", "sales"),
    (3, "Carol", "carol@example.com", "engineering"),
]


def ensure_users() -> None:
    db.execute(
        "CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name VARCHAR, email VARCHAR, team VARCHAR)"
    )
    for user_id, name, email, team in USERS:
        db.execute(
            "INSERT OR IGNORE INTO users VALUES ($id, $name, $email, $team)",
            {"id": user_id, "name": name, "email": email, "team": team},
        )
