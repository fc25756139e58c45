"""The detector's errors: one root, and a flag saying whether to retry.

A retriable error is worth waiting out (a broker restarting, a slow network);
a non-retriable one needs someone to change something, and its message says
what.
"""

from __future__ import annotations


class NetfraudError(Exception):
    """Root of every error netfraud raises on purpose."""

    retriable = False


class ConfigError(NetfraudError):
    """A setting is unknown, missing or invalid; the message names it and the fix."""


class BundleError(NetfraudError):
    """A model bundle is missing, corrupt or does not fit the input."""


class TransportError(NetfraudError):
    """Kafka could not be reached or did not acknowledge in time."""

    retriable = True


class AuthenticationError(TransportError):
    """The broker refused the credentials or the TLS handshake."""

    retriable = False


class DeliveryError(TransportError):
    """Alerts or dead letters were not acknowledged, so offsets stay uncommitted."""


class FencedError(TransportError):
    """Another instance took over this one's transactional id (exactly-once);
    this one must stop. Give each instance its own ``delivery.transactional_id``."""

    retriable = False


class AccessDeniedError(TransportError):
    """The broker's ACLs do not allow an operation netfraud needs; the message
    names the resource (docs/operating.md lists the ACLs)."""

    retriable = False


class TrainingDataError(NetfraudError):
    """The data to retrain on is missing, too small or unreadable; the message says where."""


class RegistryBusyError(NetfraudError):
    """Another retrain holds the registry's lock; this one did nothing."""

    retriable = True
