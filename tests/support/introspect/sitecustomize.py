"""Loaded by Python at start-up when this folder is on PYTHONPATH (see tests/support/served_routes.py).

It lets a real `meterd` process report the HTTP routes and gRPC methods it actually serves, so
the authorization matrix is checked against the live application, not against a copy of its
route list. It does nothing unless TEST_METERD_INTROSPECT names the file to write.
"""

import os

if os.environ.get("TEST_METERD_INTROSPECT"):
    from tests.support.served_routes import install_recorders

    install_recorders(os.environ["TEST_METERD_INTROSPECT"])
