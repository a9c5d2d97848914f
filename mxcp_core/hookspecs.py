"""The contract between the core and its plugins. hookspecs.md documents each hook; a test keeps both in sync.

Every argument is a keyword argument: an implementation may accept any subset, so adding an argument later
stays compatible.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .markers import hookspec

if TYPE_CHECKING:
    import duckdb
    import typer

    from .config import SqlEngineConfig
    from .records import (
        ConfigSection,
        EndpointCall,
        Executor,
        ProjectContext,
        PromptDefinition,
        ResourceDefinition,
        EndpointDefinition,
        Problem,
        SecretLoad,
        SecretValue,
        ToolDefinition,
        UserContext,
    )
    from .sign_in import HttpSignIn, IdentityProvider, SignInStore


@hookspec
def config_sections() -> Iterable[ConfigSection] | None:
    """Sections of mxcp-site.yml and the user config this plugin owns, each structured into an attrs class."""


@hookspec
def on_init(runtime: Any) -> None:
    """Runtime started (database open, functions registered): set up resources before the first call."""


@hookspec
def on_shutdown(runtime: Any) -> None:
    """Runtime stopping (or reloading): release what on_init acquired; the database is still open."""


@hookspec
def configure_database(conn: duckdb.DuckDBPyConnection, project: ProjectContext) -> None:
    """A DuckDB database was opened: load extensions, create DuckDB secrets."""


@hookspec
def register_functions(conn: duckdb.DuckDBPyConnection, project: ProjectContext) -> None:
    """A DuckDB database was opened: register user-defined functions on the connection."""


@hookspec(firstresult=True)
def open_sql_engine(settings: SqlEngineConfig, project: ProjectContext) -> Any | None:
    """The engine for a profile's `sql.engine` other than duckdb (postgres, ...); None when not this plugin's."""


@hookspec(firstresult=True)
def open_audit_sink(settings: Any, project: ProjectContext) -> Any | None:
    """Where audit records go for the profile's `audit.sink` (jsonl, postgres, ...); None when not this plugin's."""


@hookspec(firstresult=True)
def resolve_secret(reference: str, project: ProjectContext | None, load: SecretLoad) -> SecretValue | None:
    """Resolve a value reference such as `file://token.txt`; None when this plugin does not own the scheme."""


@hookspec
def check_reload(project: ProjectContext, fresh: ProjectContext) -> str | None:
    """A reload read the project again (`fresh`): why it cannot be taken while serving, or None to take it."""


@hookspec
def provide_tool(project: ProjectContext) -> Iterable[ToolDefinition] | None:
    """Tools this plugin contributes to the project."""


@hookspec
def provide_resource(project: ProjectContext) -> Iterable[ResourceDefinition] | None:
    """Resources this plugin contributes to the project."""


@hookspec
def provide_prompt(project: ProjectContext) -> Iterable[PromptDefinition] | None:
    """Prompts this plugin contributes to the project."""


@hookspec
def provide_executor(project: ProjectContext) -> Iterable[Executor] | None:
    """Executors this plugin contributes, one per language it runs (`sql`, `python`, ...)."""


@hookspec
def check_endpoint(endpoint: EndpointDefinition, project: ProjectContext) -> Iterable[Problem | str] | None:
    """Problems with the parts of an endpoint this plugin owns; an error makes the endpoint invalid (not served)."""


@hookspec(firstresult=True)
def identify_caller(transport: str, request: Any, project: ProjectContext) -> UserContext | None:
    """Who calls over `transport` (stdio, http, cli), from the request's credentials; None when not this plugin's."""


@hookspec
def endpoint_visible(endpoint: EndpointDefinition, user: UserContext, project: ProjectContext) -> bool | None:
    """Whether `user` may see and call the endpoint; any False hides it (lists omit it, calls say "unknown")."""


@hookspec(firstresult=True)
def http_sign_in(project: ProjectContext, base_url: str, resource_url: str,
                 providers: Mapping[str, IdentityProvider],
                 open_store: Callable[[Mapping[str, Any]], SignInStore]) -> HttpSignIn | None:
    """How HTTP requests sign in: a token verifier, authorization servers, routes; None when this plugin has none."""


@hookspec
def sign_in_providers(project: ProjectContext) -> Iterable[IdentityProvider] | None:
    """Identity providers this plugin offers for the user config's `auth.provider` (github, oidc, okta, ...)."""


@hookspec(firstresult=True)
def open_sign_in_store(persistence: dict[str, Any], project: ProjectContext) -> SignInStore | None:
    """Open the sign-in proxy's store for `persistence` (`{type: sqlite, path}`); None when not this plugin's type."""


@hookspec(firstresult=True)
def call_endpoint(call: EndpointCall) -> Any:
    """Run one endpoint call; wrappers (`wrapper=True`) surround every call for audit, policies, timing."""


@hookspec
def register_commands(cli: typer.Typer) -> None:
    """Add commands to the `mxcp` command line."""
