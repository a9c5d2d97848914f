"""MXCP core: the plugin host, and everything a plugin may use. One import: `from mxcp_core import ...`.

The names below are the whole public API for plugin authors; the modules behind them are the core's business
and may change. Heavier parts (the type system, the runtime, the command API) load on first use, so importing
`hookimpl` stays cheap for every `mxcp` invocation.
"""
from __future__ import annotations

import importlib
from typing import Any

from .errors import ConfigError, ExecutionError, MxcpError, NotFoundError, ValidationError, suggest
from .markers import hookimpl, hookspec
from .records import (
    ConfigSection,
    EndpointCall,
    EndpointDefinition,
    Executor,
    InvalidEndpoint,
    Problem,
    ProjectContext,
    PromptDefinition,
    ResourceDefinition,
    RuntimeView,
    SecretLoad,
    SecretValue,
    SourceSpec,
    ToolDefinition,
    UserContext,
)

__version__ = "0.1.0"

# Public names loaded on first use: name -> "module:attribute" (a module alone for a namespace).
_LAZY = {
    # endpoint types: parse YAML-shaped type declarations, compile validators and JSON schemas
    "parse_type": "typesystem:parse_type",
    "parse_parameters": "typesystem:parse_parameters",
    "to_json_schema": "typesystem:to_json_schema",
    "to_jsonable": "typesystem:to_jsonable",
    "compile_endpoint": "execution:compile_endpoint",
    "CompiledEndpoint": "execution:CompiledEndpoint",
    # the runtime, in its phases, and what runs on it
    "Runtime": "execution:Runtime",
    "Phase": "execution:Phase",
    "open_project": "project:open_project",
    "validate_project": "validation:validate_project",
    "run_tests": "testing_runner:run_tests",
    "TEST_ASSERTION_KEYS": "testing_runner:ASSERTION_KEYS",
    "endpoint_test_problems": "testing_runner:structure_problems",
    # SQL on the profile's engine (DuckDB, or one of open_sql_engine)
    "call_cursor": "context:cursor",
    "run_sql": "sql:run_sql",
    "Rows": "sql:Rows",
    "split_statements": "sql:split_statements",
    "sql_parameter_names": "sql:parameter_names",
    "first_line": "sql:first_line",
    "quote_literal": "sql:quote_literal",
    "quote_identifier": "sql:quote_identifier",
    "install_sql_identity": "sql_identity:install_sql_identity",
    "SQL_IDENTITY_FUNCTIONS": "sql_identity:FUNCTIONS",
    "create_function": "udf:create_function",
    "udf_methods": "udf:udf_methods",
    "function_signature": "udf:function_signature",
    # reading project files
    "structure_config": "config:structure",
    "Seconds": "config:Seconds",
    "Count": "config:Count",
    "load_yaml_file": "yamlfile:load_yaml_file",
    "read_text_file": "yamlfile:read_text_file",
    "confined_path": "project:confined_path",
    "reference_origin": "project:reference_origin",
    "line_of": "yamlfile:line_of",
    "add_to_import_path": "user_modules:add_to_import_path",
    "remove_from_import_path": "user_modules:remove_from_import_path",
    "folder_on_path": "user_modules:folder_on_path",
    "load_private_module": "user_modules:load_private_module",
    "forget_modules_under": "user_modules:forget_modules_under",
    # secrets and sensitive values
    "mask": "redaction:mask",
    "REDACTED": "redaction:MASK",
    "env_flag": "environment:env_flag",
    # Python endpoints' lifecycle marks and what a call asked for that the profile lacks
    "lifecycle_role": "runtime_api:lifecycle_role",
    "run_init_functions": "runtime_api:run_init_functions",
    "run_shutdown_functions": "runtime_api:run_shutdown_functions",
    "missing_secrets": "runtime_api:missing_secrets",
    # sign-in: what sign-in, identity-provider and store plugins return
    "HttpSignIn": "sign_in:HttpSignIn",
    "IdentityProvider": "sign_in:IdentityProvider",
    "ProviderConnection": "sign_in:ProviderConnection",
    "SignInStore": "sign_in:SignInStore",
    "SIGN_IN_MODES": "sign_in:MODES",
    "SIGN_IN_PROVIDER_PLUGINS": "features:SIGN_IN_PROVIDER_PLUGINS",
    "user_config_path": "config:user_config_path",
    # commands added through register_commands
    "commands": "commands",
    # spans nested in the current request's, recorded while a telemetry plugin is on (a no-op otherwise)
    "tracing": "tracing",
}

__all__ = [
    "hookimpl", "hookspec",
    "ConfigError", "ExecutionError", "MxcpError", "NotFoundError", "ValidationError", "suggest",
    "ConfigSection", "EndpointCall", "EndpointDefinition", "Executor", "InvalidEndpoint", "Problem",
    "ProjectContext", "PromptDefinition", "ResourceDefinition", "RuntimeView", "SecretLoad", "SecretValue",
    "SourceSpec", "ToolDefinition", "UserContext",
]
__all__ += list(_LAZY)


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'mxcp_core' has no attribute '{name}'")
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(f".{module_name}", __name__)
    value = getattr(module, attribute) if attribute else module
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
