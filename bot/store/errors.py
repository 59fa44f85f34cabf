"""What the store raises: every failure is a StoreError whose message says why."""

from __future__ import annotations


class StoreError(Exception):
    """The history store could not do what was asked; the message says why."""


class StoreBusy(StoreError):
    """Another connection held the database's write lock for longer than busy_timeout."""


class DatabaseTooNew(StoreError):
    """The database was migrated by a newer version of the code than this one."""


class MigrationError(StoreError):
    """The migrations folder is malformed, or applying a migration failed (and was rolled back)."""


class JobNotFound(StoreError):
    """No job has this id (never existed, or its user was forgotten)."""


class InvalidTransition(StoreError):
    """The job is not in a state that allows this change (e.g. marking a cancelled job done)."""
