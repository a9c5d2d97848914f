"""Builtin plugin: endpoints with `policies:` fail closed.

This version has no CEL evaluator. An endpoint whose YAML declares input or output policies is therefore
denied rather than served as if it had none: a policy that cannot be evaluated must deny (the original allows,
which is a bug). A third-party plugin that evaluates CEL can replace this one (`disable_plugins: [policies]`).
"""
from __future__ import annotations

from typing import Any

from mxcp_core import ConfigSection, ExecutionError, hookimpl

REASON = "policies are declared but this server has no policy evaluator; the call is denied"


def declared_policies(endpoint: Any) -> bool:
    policies = endpoint.policies or {}
    return bool(policies.get("input") or policies.get("output"))


@hookimpl
def config_sections():
    # The endpoint key this plugin gives meaning to: without a plugin declaring it, such endpoints are refused.
    return [ConfigSection("policies", dict[str, Any], scope="endpoint", description="input and output policies")]


@hookimpl(wrapper=True)
def call_endpoint(call: Any) -> Any:
    if declared_policies(call.endpoint):
        call.notes["policy_decision"] = "deny"
        call.notes["policy_reason"] = REASON
        raise ExecutionError(f"{call.endpoint.kind} '{call.endpoint.key}': {REASON}")
    return (yield)
