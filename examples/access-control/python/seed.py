"""Demo data, created when the server starts (a real project would load it with dbt or a pipeline)."""
from mxcp.runtime import db, on_init, user


@on_init
def create_tables() -> None:
    db.execute("""
        CREATE TABLE IF NOT EXISTS employees AS SELECT * FROM (VALUES
            (1, 'alice', 'Alice Archer', 'engineering', 120000, '111-22-3333', '1 Elm St'),
            (2, 'bob',   'Bob Baker',    'engineering',  95000, '444-55-6666', '2 Oak Ave'),
            (3, 'hana',  'Hana Hughes',  'people',       88000, '777-88-9999', '3 Pine Rd')
        ) t(id, username, name, department, salary, ssn, home_address)
    """)
    db.execute("""
        CREATE TABLE IF NOT EXISTS expenses AS SELECT * FROM (VALUES
            (10, 'alice', 'train to Lyon', 89.50),
            (11, 'alice', 'hotel', 240.00),
            (12, 'bob',   'conference ticket', 450.00)
        ) t(id, owner, note, amount)
    """)


def whoami() -> dict:
    """The caller as this server sees it."""
    return {"username": user.username, "role": user.role, "authenticated": user.is_authenticated()}
