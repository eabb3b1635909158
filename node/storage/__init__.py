"""Durable storage: one LMDB environment, named databases, one group-commit writer."""

from .env import CORE_DATABASES, DEDUPE_BACKFILL, SCHEMA_VERSION, Storage, StorageError, open_storage
from .writer import WriteBatch

__all__ = ["CORE_DATABASES", "DEDUPE_BACKFILL", "SCHEMA_VERSION", "Storage", "StorageError", "WriteBatch", "open_storage"]
