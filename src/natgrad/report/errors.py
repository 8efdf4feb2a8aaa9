"""Errors of run folders; the ``natgrad`` command turns each into a message and exit code 2."""

from __future__ import annotations


class RunFolderError(ValueError):
    """A directory is not a usable run folder (the message says why and what to do)."""


class FolderLockedError(RunFolderError):
    """Another process is writing the run folder (the message names it)."""
