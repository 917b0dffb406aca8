"""Persistence: SQLAlchemy Core over SQLite (aiosqlite) or PostgreSQL (asyncpg)."""

from service.storage.db import Database, create_database
from service.storage.repository import Repository

__all__ = ["Database", "Repository", "create_database"]
