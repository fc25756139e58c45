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
