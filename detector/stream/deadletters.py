"""Dead letters: a record that cannot be scored, kept as it arrived.

The original bytes go to the dead-letter topic under the original key, with
headers saying why and where from, so nothing is lost and a fixed record
can be replayed.
"""

from __future__ import annotations

from detector.stream.transport import Headers, Message

REASON = "netfraud.error.reason"
STAGE = "netfraud.error.stage"
ORIGIN_TOPIC = "netfraud.origin.topic"
ORIGIN_PARTITION = "netfraud.origin.partition"
ORIGIN_OFFSET = "netfraud.origin.offset"
TRUNCATED = "netfraud.error.truncated"
MAX_REASON_BYTES = 1_000
#: Key plus value of a dead letter at most: with its headers (1.3 kB at most)
#: it stays under the producer's and the broker's 1 MiB message limits.
MAX_LETTER_BYTES = 1_040_000


def headers_for(message: Message, reason: str, stage: str = "decode") -> Headers:
    """Headers of the dead letter for ``message``."""
    return [
        (REASON, reason.encode()[:MAX_REASON_BYTES]),
        (STAGE, stage.encode()),
        (ORIGIN_TOPIC, message.topic.encode()),
        (ORIGIN_PARTITION, str(message.partition).encode()),
        (ORIGIN_OFFSET, str(message.offset).encode()),
    ]


def letter(message: Message, reason: str, stage: str = "decode") -> tuple[bytes, Headers]:
    """Value and headers of the dead letter for ``message``.

    A value too large to publish again with its key and headers is cut so
    that key and value fit :data:`MAX_LETTER_BYTES`; the
    ``netfraud.error.truncated`` header then holds its original length.
    """
    value, headers = message.value or b"", headers_for(message, reason, stage)
    budget = max(MAX_LETTER_BYTES - len(message.key or b""), 0)
    if len(value) > budget:
        headers.append((TRUNCATED, str(len(value)).encode()))
        value = value[:budget]
    return value, headers


def reason_kind(reason: str) -> str:
    """A bounded label for metrics: the reason up to its first colon or quote."""
    head = reason.split(":", 1)[0].split("'", 1)[0].strip()
    return head[:40] or "unknown"
