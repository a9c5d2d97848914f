"""Builtin plugin: a fixed caller for the local transports, from the user config.

A stdio server and `mxcp run` have one caller, the person at this machine. The user config may name it per
project profile, so policies and the SQL identity functions see that user rather than an anonymous one:

    projects:
      demo:
        profiles:
          default:
            user_context: {username: alice, email: alice@example.com, role: admin}

Over HTTP the caller is remote and must sign in: this identity never applies there.
"""
from __future__ import annotations

from typing import Any

from mxcp_core import ConfigError, ConfigSection, UserContext, hookimpl

LOCAL_TRANSPORTS = ("stdio", "cli")


@hookimpl
def config_sections():
    return [ConfigSection("user_context", dict[str, Any], scope="user_profile",
                          description="the caller of stdio serving and `mxcp run` (username, email, role, ...)")]


@hookimpl(trylast=True)  # a sign-in plugin that knows better answers first
def identify_caller(transport, request, project):
    if transport not in LOCAL_TRANSPORTS:
        return None
    configured = project.plugin_config("user_context", scope="user_profile")
    if not configured:
        return None
    try:
        return UserContext.from_mapping(configured, where="user_context")
    except TypeError as exc:
        raise ConfigError(f"the user config's user_context for profile '{project.profile}': {exc}") from None
