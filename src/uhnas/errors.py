"""Errors a user can fix: one base class, so the CLI prints them as one line and treats anything else as a bug.

Raise a subclass of `UhnasError` when the cause is the user's input or environment (a config key, an
architecture, a backend preset, a dataset file, a run directory, an LLM endpoint); its message is one complete
line that says what is wrong and where. Every other exception is a bug in uhnas (or a library) and keeps its
traceback.
"""

from __future__ import annotations


class UhnasError(Exception):
    """An error in the user's input or environment; the message is one line naming what and where."""


class ConfigError(UhnasError):
    """A run or study configuration that cannot be loaded: names the file and the key path."""


class ArchitectureError(UhnasError):
    """An architecture that is malformed or impossible for the dataset: names the layer and field."""


class BackendError(UhnasError):
    """A backend preset that cannot be loaded or configured, or an unknown backend name."""


class DatasetError(UhnasError):
    """A dataset that cannot be found, read or downloaded."""


class StoreError(UhnasError):
    """A run directory or storage that cannot be opened, created or resumed."""


class SearchError(UhnasError):
    """A search that cannot start or resume, or that stopped because its evaluations keep failing."""


class MethodError(UhnasError):
    """An unknown search method, or one whose plugin cannot be loaded."""


class ProposalError(UhnasError):
    """An operator could not produce a valid architecture this attempt (the engine asks again); one line."""


__all__ = [
    "ArchitectureError",
    "BackendError",
    "ConfigError",
    "DatasetError",
    "MethodError",
    "ProposalError",
    "SearchError",
    "StoreError",
    "UhnasError",
]
