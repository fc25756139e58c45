"""TLS, SCRAM-SHA-512 and mutual TLS against a broker that enforces ACLs.

The broker has three client listeners: PLAINTEXT (for the test itself, as a
super user), SASL_SSL with SCRAM-SHA-512, and SSL with client certificates
required. An ACL authorizer denies everything not granted, and the principal
``User:netfraud`` (the SCRAM user, and the client certificate's CN) gets
exactly the ACLs that docs/operating.md lists, so a passing run also proves
that list is enough.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from certs import Pki, make_pki, openssl
from harness import Server, alert_keys, create_topics, read_messages, unique
from helpers import produce_file
from kafka import KafkaAdminClient
from kafka.admin import (
    ACL,
    ACLOperation,
    ACLPermissionType,
    ResourcePattern,
    ResourceType,
)
from kafka_fixtures import localkafka

pytestmark = pytest.mark.integration
PASSWORD = "s3cret-Pa55word-9f81"
PRINCIPAL = "User:netfraud"
TIMEOUT_S = 120


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if openssl() is None:
        reason = "openssl not found: the security tests make their certificates with it"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + " (CI=true)")
        pytest.skip(reason)
    return make_pki(tmp_path_factory.mktemp("pki"))


def _secure_broker(start: Callable[..., Any], pki: Pki) -> tuple[Any, dict[str, str]]:
    """A broker with PLAINTEXT, SASL_SSL (SCRAM) and SSL (mutual TLS) listeners."""
    ports = {name: localkafka.free_port() for name in ("PLAINTEXT", "SASL_SSL", "SSL")}
    listeners = ",".join(f"{name}://127.0.0.1:{port}" for name, port in ports.items())
    properties = {
        "listeners": listeners,
        "inter.broker.listener.name": "PLAINTEXT",
        "sasl.enabled.mechanisms": "SCRAM-SHA-512",
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(pki.broker_keystore),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(pki.ca),
        "listener.name.ssl.ssl.client.auth": "required",
        "ssl.principal.mapping.rules": "RULE:^CN=([^,]+).*$/$1/,DEFAULT",
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": "User:ANONYMOUS",  # the PLAINTEXT and controller listeners
        "allow.everyone.if.no.acl.found": "false",
    }
    scram = f"SCRAM-SHA-512=[name=netfraud,password={PASSWORD}]"
    broker = start(properties, ("--add-scram", scram), port=ports["PLAINTEXT"])
    return broker, {name: f"127.0.0.1:{port}" for name, port in ports.items()}


def _grant(bootstrap: str, topics: dict[str, str], group: str, transactional_id: str) -> None:
    """The ACLs of docs/operating.md, "Security and ACLs"."""
    grants = [
        (ResourceType.TOPIC, topics["input"], [ACLOperation.READ, ACLOperation.DESCRIBE]),
        (ResourceType.GROUP, group, [ACLOperation.READ]),
        (ResourceType.TOPIC, topics["alerts"], [ACLOperation.WRITE, ACLOperation.DESCRIBE]),
        (ResourceType.TOPIC, topics["dead"], [ACLOperation.WRITE, ACLOperation.DESCRIBE]),
        (ResourceType.TOPIC, topics["feedback"], [ACLOperation.READ, ACLOperation.DESCRIBE]),
        (ResourceType.TRANSACTIONAL_ID, transactional_id, [ACLOperation.WRITE]),
        (ResourceType.CLUSTER, "kafka-cluster", [ACLOperation.IDEMPOTENT_WRITE]),
    ]
    acls = [
        ACL(PRINCIPAL, "*", op, ACLPermissionType.ALLOW, ResourcePattern(kind, name))
        for kind, name, ops in grants
        for op in ops
    ]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        result = admin.create_acls(acls)
        assert not result["failed"], result["failed"]
    finally:
        admin.close()


@pytest.fixture(scope="module")
def secure(
    pki: Pki,
    tmp_path_factory: pytest.TempPathFactory,
    demo_data: dict[str, Path],
) -> Any:
    """The secured broker, its topics filled, netfraud's ACLs granted."""
    root = tmp_path_factory.mktemp("secure")
    brokers: list[Any] = []

    def start(properties: dict[str, str], format_args: tuple[str, ...], port: int) -> Any:
        broker = localkafka.LocalKafka(
            port, root / "kafka", extra_properties=properties, format_args=list(format_args)
        )
        brokers.append(broker)
        broker.start(timeout=120)
        return broker

    try:
        broker, addresses = _secure_broker(start, pki)
        topics = {k: unique(f"sec-{k}") for k in ("input", "feedback")}
        create_topics(addresses["PLAINTEXT"], {topics["input"]: 3, topics["feedback"]: 1})
        produce_file(addresses["PLAINTEXT"], topics["input"], demo_data["stream"])
        password_file = root / "password"
        password_file.write_text(PASSWORD + "\n")
        yield {
            "addresses": addresses,
            "topics": topics,
            "password_file": password_file,
            "root": root,
        }
    finally:
        for broker in brokers:
            broker.stop()


def _serve(secure: Any, registry: Path, log: Path, listener: str, **env: str) -> Server:
    """A serve of its own group, alerts and dead-letter topics."""
    topics, group = secure["topics"], unique("sec")
    alerts, dead = unique("sec-alerts"), unique("sec-dlq")
    create_topics(secure["addresses"]["PLAINTEXT"], {alerts: 1, dead: 1})
    server = Server(
        secure["addresses"][listener],
        topics["input"],
        registry,
        group,
        alerts,
        dead,
        log,
        ("--feedback-topic", topics["feedback"], "--stop-after-idle", "4"),
    )
    server.env = {f"NETFRAUD_KAFKA__{k.upper()}": v for k, v in env.items()}
    return server


def _grant_for(secure: Any, server: Server, transactional_id: str = "none") -> None:
    topics = secure["topics"] | {"alerts": server.alerts, "dead": server.dead}
    _grant(secure["addresses"]["PLAINTEXT"], topics, server.group, transactional_id)


def test_scram_sha_512_over_tls_with_exactly_once(
    secure: Any, pki: Pki, model_registry: Path, tmp_path: Path
) -> None:
    """SCRAM-SHA-512 over TLS, password from a file, exactly-once: alerts arrive
    under exactly the documented ACLs, and the password is never logged."""
    server = _serve(
        secure,
        model_registry,
        tmp_path / "serve.log",
        "SASL_SSL",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="netfraud",
        sasl_password_file=str(secure["password_file"]),
        ssl_cafile=str(pki.ca),
    )
    server.args = [*server.args, "--delivery", "exactly-once"]
    server.env["NETFRAUD_DELIVERY__TRANSACTIONAL_ID"] = tx = unique("tx")
    _grant_for(secure, server, tx)

    code = server.start().wait(TIMEOUT_S)

    log = server.text()
    alerts = alert_keys(read_messages(secure["addresses"]["PLAINTEXT"], server.alerts, True))
    started = json.loads(next(line for line in log.splitlines() if '"starting"' in line))
    print(f"\n[security/scram] exit_code={code} alerts={len(alerts)} secret_in_log=False")
    assert code == 0, server.tail()
    assert alerts
    assert PASSWORD not in log
    assert started["settings"]["kafka"]["security_protocol"] == "SASL_SSL"


def test_mutual_tls_with_a_client_certificate(
    secure: Any, pki: Pki, model_registry: Path, tmp_path: Path
) -> None:
    """A client certificate on the SSL listener (CN=netfraud): alerts arrive."""
    server = _serve(
        secure,
        model_registry,
        tmp_path / "serve.log",
        "SSL",
        security_protocol="SSL",
        ssl_cafile=str(pki.ca),
        ssl_certfile=str(pki.client_cert),
        ssl_keyfile=str(pki.client_key),
    )
    _grant_for(secure, server)

    code = server.start().wait(TIMEOUT_S)

    alerts = alert_keys(read_messages(secure["addresses"]["PLAINTEXT"], server.alerts))
    print(f"\n[security/mtls] exit_code={code} alerts={len(alerts)}")
    assert code == 0, server.tail()
    assert alerts


@pytest.mark.parametrize("fault", ["wrong password", "untrusted CA", "no ACL for the group"])
def test_bad_credentials_fail_with_a_clear_message(
    secure: Any, pki: Pki, model_registry: Path, tmp_path: Path, fault: str
) -> None:
    """A wrong password, a CA that did not sign the broker's certificate, or a
    group without ACLs: serve exits non-zero and says what to check, without
    the secret."""
    wrong = tmp_path / "password"
    wrong.write_text("not-the-password\n")
    server = _serve(
        secure,
        model_registry,
        tmp_path / "serve.log",
        "SASL_SSL",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="netfraud",
        sasl_password_file=str(wrong if fault == "wrong password" else secure["password_file"]),
        ssl_cafile=str(pki.other_ca if fault == "untrusted CA" else pki.ca),
    )
    if fault != "no ACL for the group":
        _grant_for(secure, server)

    code = server.start().wait(TIMEOUT_S)

    log = server.text()
    message = next((line for line in log.splitlines() if "netfraud: error:" in line), "")
    print(f"\n[security/{fault}] exit_code={code} message={message[:300]!r}")
    assert code != 0
    hint = "docs/operating.md" if fault.startswith("no ACL") else "kafka.sasl_* / kafka.ssl_*"
    assert hint in message, log[-2000:]
    assert PASSWORD not in log and "not-the-password" not in log
