"""Database access: always through db.execute with named parameters, never a cached connection."""
from mxcp.runtime import db
from utils.demo_data import ensure_users


def get_user(user_id: int) -> dict:
    ensure_users()
    row = db.execute("SELECT id, name, email, team FROM users WHERE id = $id", {"id": user_id}).fetchone()
    if row is None:
        return {"error": f"User {user_id} not found"}
    return row


def users_in_team(team: str) -> list:
    ensure_users()
    return db.execute("SELECT id, name FROM users WHERE team = $team ORDER BY id", {"team": team})
