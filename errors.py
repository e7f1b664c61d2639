"""The one exception hierarchy of fedmq.

Every error a user or a peer can cause is a ``FedmqError``. Each process catches it at its edge:
the CLI prints ``message`` and ``hint`` on one line each and exits non-zero; the aggregator turns a
``ProtocolError`` from a silo into a logged and recorded rejection and carries on.
"""

from __future__ import annotations


class FedmqError(Exception):
    """Base class. ``hint`` tells the user what to do next."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class ProtocolError(FedmqError):
    """A message on the wire broke the contract: bad framing, schema, version, digest or size."""


class Overloaded(ProtocolError):
    """A receiver had no room for a message just then: nothing is wrong with the message, and the
    sender may send it again (the aggregator asks it to)."""


class UpdateRejected(ProtocolError):
    """A well-formed update that cannot be aggregated (wrong round, shapes, non-finite values...)."""


class AlreadyCounted(FedmqError):
    """A repeat of an update this run already counted (a re-send after a reconnect, a duplicated
    delivery, an answer to a re-ask): a no-op that is logged, never a rejection and never a second count."""


class RoundFailed(FedmqError):
    """A round cannot complete: too few updates after its deadline and the bounded re-asks. The job
    stops, marked failed with the reason; the same command resumes it from the last completed round."""


class ConfigError(FedmqError):
    """A bad option, a missing or malformed file or folder given on the command line."""


class DataError(ConfigError):
    """A silo's data folder is missing, empty, or does not match the job."""


class TaskError(FedmqError):
    """A task plug-in cannot be loaded as a task, or its code raised or returned something wrong."""


class BrokerError(FedmqError):
    """The broker cannot be reached, refused us, or cannot be started."""


class StoreError(FedmqError):
    """The database cannot be opened or holds something we cannot use."""
