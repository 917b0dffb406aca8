"""Test-only helpers: locating real binaries and starting real servers for integration tests."""
