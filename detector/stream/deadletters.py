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
MAX_REASON_BYTES = 1_000


def headers_for(message: Message, reason: str, stage: str = "decode") -> Headers:
    """Headers of the dead letter for ``message``."""
    return [
        (REASON, reason.encode()[:MAX_REASON_BYTES]),
        (STAGE, stage.encode()),
        (ORIGIN_TOPIC, message.topic.encode()),
        (ORIGIN_PARTITION, str(message.partition).encode()),
        (ORIGIN_OFFSET, str(message.offset).encode()),
    ]


def reason_kind(reason: str) -> str:
    """A bounded label for metrics: the reason up to its first colon or quote."""
    head = reason.split(":", 1)[0].split("'", 1)[0].strip()
    return head[:40] or "unknown"
