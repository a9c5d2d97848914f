"""Sign-in for HTTP serving: the OAuth pieces the `sign_in` plugin assembles (token verification, the
authorization-server proxy, identity from claims) and the builtin identity-provider and store plugins.

Nothing here is imported until a server with an `auth:` block starts: the mcp SDK and httpx2 load then.
"""
