"""The caller's identity in DuckDB SQL: `get_username()`, `get_user_email()`, `get_user_provider()`,
`get_user_external_token()`, `get_user_id()`, `get_user_role()`; NULL for every one when the caller is anonymous.

How (docs/identity-in-sql.md has the measurements):
- The functions are macros over a variable, `getvariable('mxcp_user')[i]`, created once per database open in an
  in-memory catalog attached as `mxcp_identity`: nothing lands in the project's file, and every cursor sees them.
  A Python UDF reading a contextvar would be wrong: DuckDB evaluates it on its own threads, which belong to no call.
- A cursor is *bound* by setting the variable (`SET VARIABLE` is per cursor, so concurrent calls each see their own
  caller, even on a parallel scan) and its `search_path` to `<database>.main,mxcp_identity.main` (so the names
  resolve unqualified; new tables still go to the project's main schema). An anonymous caller leaves the variable
  unset, which reads as NULL.
- Binding costs a few hundred µs, more than a trivial call, so a call's cursor binds lazily, at most once: when the
  SQL about to run mentions one of the functions, or from the start once the database holds views, macros or
  column defaults that use them. `db.connection` (SQL that cannot be inspected) binds eagerly.

Kept in the core rather than a plugin: binding belongs to the life of a call's cursor (taken in `context.cursor()`,
used by `run_sql`), which no hook reaches, and a plugin could only create the macros, leaving the core to know their
catalog and variable anyway. Plugins that open DuckDB instances of their own use `install_sql_identity`.
"""
from __future__ import annotations

import functools
import logging
import re
from typing import TYPE_CHECKING, Any

from .sql import quote_identifier, quote_literal

if TYPE_CHECKING:
    from .records import UserContext

log = logging.getLogger(__name__)

CATALOG = "mxcp_identity"
VARIABLE = "mxcp_user"
# The variable is a VARCHAR list in this order: cheaper to set than a struct, and cheaper without a cast in the
# statement (the list of Python strings is VARCHAR[] already; the macros cast each item, for an unset variable).
FIELDS = ("user_id", "username", "email", "provider", "role", "external_token")
FUNCTIONS = {
    "get_user_id": "user_id",
    "get_username": "username",
    "get_user_email": "email",
    "get_user_provider": "provider",
    "get_user_role": "role",
    "get_user_external_token": "external_token",
}
# A mention of one of the functions: decides whether SQL text needs its cursor bound (false positives only cost).
PATTERN = r'(?i)\bget_(?:username|user_(?:id|email|provider|role|external_token))"?\s*\('
_MENTION = re.compile(PATTERN)
_SET_USER = f"SET VARIABLE {VARIABLE} = ?"
# Statements after which the database may hold an object (view, macro, column default) using the functions.
_DEFINING = ("CREATE", "ALTER", "CREATE_FUNC")


@functools.lru_cache(maxsize=1024)
def mentions_identity(sql: str) -> bool:
    """Whether the SQL text calls one of the identity functions (by name; comments and strings count too)."""
    return _MENTION.search(sql) is not None


@functools.lru_cache(maxsize=1)
def _set_user_statement() -> Any:
    import duckdb

    return duckdb.extract_statements(_SET_USER)[0]


def _values(user: UserContext | None) -> list[str | None] | None:
    """The variable's value for `user`; None for the anonymous caller (the variable stays unset: all NULL)."""
    if user is None or user.is_anonymous:
        return None
    values = (getattr(user, field) for field in FIELDS)
    return [None if value is None else str(value) for value in values]


class IdentityFunctions:
    """The identity functions of one DuckDB instance, and binding its cursors to a caller."""

    def __init__(self, conn: Any) -> None:
        import duckdb

        database = conn.execute("SELECT current_database()").fetchone()[0]
        if database == CATALOG:
            raise duckdb.CatalogException(f"the database may not be named {CATALOG} (mxcp uses that name)")
        # READ_WRITE: a read-only instance would attach it read-only, which DuckDB refuses for ':memory:'.
        conn.execute(f"ATTACH ':memory:' AS {CATALOG} (READ_WRITE)")
        # One pass over the functions (listing them costs ~15 ms: DuckDB has thousands): those named like ours, and
        # macros of the database that use ours.
        rows = conn.execute(
            "SELECT function_name, macro_definition FROM duckdb_functions() "
            f"WHERE database_name <> {quote_literal(CATALOG)} AND (list_contains($names, function_name) "
            "   OR (macro_definition IS NOT NULL AND regexp_matches(macro_definition, $p)))",
            {"names": list(FUNCTIONS), "p": PATTERN},
        ).fetchall()
        # A function of the same name that a plugin registered (the original MXCP's Python UDFs) is kept: it
        # resolves whether a cursor is bound or not, where ours would shadow it on bound cursors only.
        taken = {name for name, _ in rows if name in FUNCTIONS}
        for name in sorted(taken):
            log.warning(
                "a function named %s() is already registered (by a plugin?): it is used instead of mxcp's, "
                "which reads the caller of the current call (docs/identity-in-sql.md)", name,
            )
        self.names = tuple(name for name in FUNCTIONS if name not in taken)
        for name in self.names:
            index = FIELDS.index(FUNCTIONS[name]) + 1
            conn.execute(
                f"CREATE MACRO {CATALOG}.main.{name}() AS CAST(getvariable('{VARIABLE}')[{index}] AS VARCHAR)"
            )
        path = f"{quote_identifier(database)}.main,{CATALOG}.main"
        self.database = database
        self._set_path = duckdb.extract_statements(f"SET search_path = {quote_literal(path)}")[0]
        # True once the database holds objects that use the functions: then every call binds, whatever its SQL.
        self.everywhere = any(definition and mentions_identity(definition) for _, definition in rows) or (
            self._used_by_views_or_defaults(conn))

    @staticmethod
    def _used_by_views_or_defaults(conn: Any) -> bool:
        # Without a view of its own or any table (column defaults belong to tables) nothing can use them: asked
        # first, as listing every column (DuckDB's internal views have hundreds) costs several ms.
        if not conn.execute(
            "SELECT EXISTS (SELECT 1 FROM duckdb_views() WHERE NOT internal) OR EXISTS (SELECT 1 FROM duckdb_tables())"
        ).fetchone()[0]:
            return False
        return bool(conn.execute(
            "SELECT EXISTS (SELECT 1 FROM duckdb_views() WHERE NOT internal AND regexp_matches(sql, $p)) "
            "OR EXISTS (SELECT 1 FROM duckdb_columns() WHERE column_default IS NOT NULL "
            "   AND regexp_matches(column_default, $p))",
            {"p": PATTERN},
        ).fetchone()[0])

    def needed(self, sql: str) -> bool:
        """Whether a cursor must be bound before `sql` runs on it."""
        return self.everywhere or mentions_identity(sql)

    def ran(self, sql: str, statements: Any) -> None:
        """After `sql` ran: a statement that may have defined an object using the functions makes binding permanent."""
        if not self.everywhere and mentions_identity(sql) and any(
            statement.type.name in _DEFINING for statement, _ in statements
        ):
            self.everywhere = True

    def bind(self, cursor: Any, user: UserContext | None) -> None:
        """Make the functions resolve on `cursor` and return `user`'s values (NULL for the anonymous caller)."""
        cursor.execute(self._set_path)
        values = _values(user)
        if values is not None:
            cursor.execute(_set_user_statement(), [values])

    def missing(self, error: BaseException) -> bool:
        """Whether a DuckDB error says one of the functions does not exist (an unbound cursor met a view using it)."""
        text = str(error)
        return "does not exist" in text and any(f"name {name} " in text for name in self.names)


def install_sql_identity(conn: Any, user: UserContext | None) -> None:
    """On a DuckDB connection of a plugin's own (a sandbox instance): create the identity functions and bind
    `conn` to `user`, so SQL there, and views of the project database, see the caller as endpoints do. Call it
    once, after attaching the project database as the default catalog and before locking the configuration."""
    IdentityFunctions(conn).bind(conn, user)
