"""A real OAuth 2.1 / OpenID Connect authorization server for the test suite (Authlib on Flask).

Run it as a subprocess: ``python -m tests.authserver --port P --state-dir DIR`` (cwd = the repository root).
It prints one line ``READY http://127.0.0.1:P`` on stdout once it listens, logs to stderr only and stops
cleanly on SIGTERM. ``tests/auth_fixtures.py`` starts it and documents its users and clients;
``tests/authserver/app.py`` holds the Flask app and the in-memory models.
"""
