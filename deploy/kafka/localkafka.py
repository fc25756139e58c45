#!/usr/bin/env python3
"""A local, Docker-free, single-node Apache Kafka broker for development and tests.

The broker jars are resolved from Maven Central with the ``pom.xml`` next to this
file and cached outside the repository, in
``${NETFRAUD_CACHE:-~/.cache/netfraud}/kafka-<version>/libs``. The broker runs in
KRaft combined mode (broker and controller in one JVM) and listens on 127.0.0.1
only.

This module uses only the Python standard library, so it runs with the system
``python3`` before any virtualenv exists.

CLI::

    python3 deploy/kafka/localkafka.py provision
    python3 deploy/kafka/localkafka.py start [--port 9092] [--data-dir .kafka]
    python3 deploy/kafka/localkafka.py stop [--data-dir .kafka]
    python3 deploy/kafka/localkafka.py status [--data-dir .kafka]

Environment:
    NETFRAUD_CACHE: cache root for the jars (default ``~/.cache/netfraud``).
    NETFRAUD_KAFKA_LIBS: use this directory of Kafka jars instead of Maven.
    NETFRAUD_KAFKA_PORT: default port for ``start`` (default 9092).
    NETFRAUD_KAFKA_DIR: default data directory for the CLI (default ``.kafka``).
    JAVA_HOME: JDK to use; otherwise ``java`` on PATH.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import hashlib
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

POM_PATH = Path(__file__).resolve().with_name("pom.xml")
LOOPBACK = "127.0.0.1"
CONTROLLER_LISTENER = "CONTROLLER"
MIN_JAVA = 17
STARTED_MARKER = b"Kafka Server started"
STOP_TIMEOUT_S = 20.0

# Keys owned by this module: overriding them would break the single-node KRaft
# layout (the controller listener always stays PLAINTEXT on loopback).
RESERVED_KEYS = frozenset(
    {
        "process.roles",
        "node.id",
        "controller.listener.names",
        "controller.quorum.voters",
        "controller.quorum.bootstrap.servers",
        "log.dirs",
        "log.dir",
    }
)

SINGLE_NODE_DEFAULTS: dict[str, str] = {
    "num.partitions": "1",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "auto.create.topics.enable": "true",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "share.coordinator.state.topic.num.partitions": "1",
    "group.initial.rebalance.delay.ms": "0",
    "num.network.threads": "2",
    "num.io.threads": "2",
    "num.recovery.threads.per.data.dir": "1",
    "log.retention.hours": "24",
    "log.segment.bytes": str(64 * 1024 * 1024),
}

# C1-only JIT: starts the broker about twice as fast on small machines; plenty
# fast for a development broker.
FAST_START_OPTIONS = ["-XX:TieredStopAtLevel=1", "-Xshare:auto"]
JVM_OPTIONS = [
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
]

LOG4J2_CONFIG = """\
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


class LocalKafkaError(RuntimeError):
    """Raised when the local broker cannot be provisioned, started or stopped."""


# --------------------------------------------------------------------------- #
# Provisioning
# --------------------------------------------------------------------------- #


def kafka_version(pom: Path = POM_PATH) -> str:
    """Returns the Kafka version pinned in ``pom.xml`` (property kafka.version)."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(pom).getroot().find("m:properties/m:kafka.version", ns)
    version = (node.text or "").strip() if node is not None else ""
    if not version:
        raise LocalKafkaError(f"{pom}: <kafka.version> property is missing")
    return version


def cache_root() -> Path:
    """Returns the cache root, ``$NETFRAUD_CACHE`` or ``~/.cache/netfraud``."""
    env = os.environ.get("NETFRAUD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "netfraud"


def libs_dir() -> Path:
    """Returns the directory that holds (or will hold) the broker jars."""
    override = os.environ.get("NETFRAUD_KAFKA_LIBS")
    if override:
        return Path(override).expanduser()
    return cache_root() / f"kafka-{kafka_version()}" / "libs"


def _marker_path(libs: Path) -> Path:
    return libs.with_name(".provisioned")


def _pom_digest() -> str:
    return hashlib.sha256(POM_PATH.read_bytes()).hexdigest()


def is_provisioned() -> bool:
    """Tells whether the jars are complete (the marker matches the current pom)."""
    if os.environ.get("NETFRAUD_KAFKA_LIBS"):
        return any(libs_dir().glob("kafka_2.13-*.jar"))
    marker = _marker_path(libs_dir())
    return marker.is_file() and marker.read_text().strip() == _pom_digest()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Holds an exclusive lock on ``path`` (serialises concurrent provisioning)."""
    import fcntl  # POSIX only; imported here so the module imports anywhere.

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def maven_executable() -> str:
    """Returns the ``mvn`` binary on PATH.

    Raises:
        LocalKafkaError: Maven is not installed.
    """
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalKafkaError(
            "mvn not found on PATH: install Maven 3.6+ (e.g. apt-get install maven)"
            " to download the Kafka jars, or set NETFRAUD_KAFKA_LIBS to a directory"
            " of Kafka jars"
        )
    return mvn


def _mvn_command(output_dir: Path) -> list[str]:
    return [
        maven_executable(),
        "-q",
        "-B",
        "-Dstyle.color=never",
        "-f",
        str(POM_PATH),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={output_dir}",
    ]


def _download_jars(libs: Path) -> None:
    for leftover in libs.parent.glob("libs.partial-*"):  # from interrupted runs
        shutil.rmtree(leftover, ignore_errors=True)
    partial = libs.with_name(f"libs.partial-{os.getpid()}")
    result = subprocess.run(_mvn_command(partial), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        output = (result.stdout + result.stderr).strip()[-4000:]
        raise LocalKafkaError(
            f"Maven failed to download the Kafka jars (exit {result.returncode}):\n"
            f"{output}\nCheck network access to Maven Central and ~/.m2/settings.xml."
        )
    shutil.rmtree(libs, ignore_errors=True)
    partial.rename(libs)


def provision(quiet: bool = False) -> Path:
    """Downloads the broker jars with Maven unless they are already cached.

    Idempotent: a marker file (holding the pom's digest) is written last, so an
    interrupted download, or a changed pom, is redone on the next call.

    Args:
        quiet: Do not print the progress line.

    Returns:
        The directory holding the jars (use it as ``-cp '<dir>/*'``).

    Raises:
        LocalKafkaError: Maven is missing or failed.
    """
    libs = libs_dir()
    if is_provisioned():
        return libs
    if os.environ.get("NETFRAUD_KAFKA_LIBS"):
        raise LocalKafkaError(
            f"NETFRAUD_KAFKA_LIBS={libs} holds no kafka_2.13-*.jar: point it at the"
            " libs/ directory of a Kafka 4.x distribution, or unset it"
        )
    with _file_lock(libs.with_name(".lock")):
        if is_provisioned():  # another process finished while we waited
            return libs
        if not quiet:
            print(f"localkafka: downloading Kafka {kafka_version()} jars to {libs} ...")
        start = time.monotonic()
        _download_jars(libs)
        _marker_path(libs).write_text(_pom_digest() + "\n")
        if not quiet:
            print(f"localkafka: jars ready in {time.monotonic() - start:.1f}s")
    return libs


# --------------------------------------------------------------------------- #
# Small helpers
# --------------------------------------------------------------------------- #


def free_port() -> int:
    """Returns a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


@functools.cache
def java_executable() -> str:
    """Returns the java binary ($JAVA_HOME/bin/java, else ``java`` on PATH).

    Raises:
        LocalKafkaError: No java, or a java older than 17.
    """
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home, "bin", "java") if java_home else None
    if candidate is not None and candidate.is_file():
        java = str(candidate)
    else:
        java = shutil.which("java") or ""
    if not java:
        raise LocalKafkaError(
            "java not found on PATH: install a JDK 17+ (e.g. apt-get install"
            " openjdk-17-jre-headless) or set JAVA_HOME"
        )
    _check_java_version(java)
    return java


def _check_java_version(java: str) -> None:
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if match is None:
        return  # unknown format: let the JVM speak for itself
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_x" style
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise LocalKafkaError(
            f"{java} is Java {major}; Kafka 4.x needs Java {MIN_JAVA}+:"
            " install a newer JDK or point JAVA_HOME at one"
        )


def _random_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64.

    An id starting with ``-`` would be read as an option by the storage tool,
    so such draws are repeated.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def _pid_alive(pid: int) -> bool:
    """Tells whether ``pid`` is a live (non-zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        # Field 3 (after the parenthesised command name) is the state.
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _pid_is_our_broker(pid: int, properties: Path) -> bool:
    """Tells whether ``pid`` is a kafka.Kafka JVM started with ``properties``."""
    if not _pid_alive(pid):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.parent.exists():
        return True  # no procfs (macOS): trust the pid file
    with contextlib.suppress(OSError):
        args = cmdline.read_bytes().split(b"\0")
        return b"kafka.Kafka" in args and str(properties).encode() in args
    return False


def _api_versions_request(correlation_id: int) -> bytes:
    # RequestHeader v1: api_key=18 (ApiVersions), api_version=0, correlation_id,
    # client_id (int16-prefixed string); the v0 body is empty.
    client_id = b"localkafka"
    header = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    return struct.pack(">i", len(header)) + header


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        data += chunk
    return data


def probe_api_versions(port: int, use_tls: bool = False, timeout: float = 2.0) -> bool:
    """Sends a Kafka ApiVersions request and checks the broker answers it.

    This is stronger than a TCP connect: the broker's request handlers must be
    up. ApiVersions needs no authentication, so it works on SASL listeners too.

    Args:
        port: Broker port on 127.0.0.1.
        use_tls: Wrap the socket in TLS (SSL / SASL_SSL listeners); the
            certificate is not verified.
        timeout: Socket timeout in seconds.

    Returns:
        True when a well-formed ApiVersions response with no error came back.
    """
    correlation_id = int(time.monotonic_ns() % 2**31)
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as raw:
            sock = raw
            if use_tls:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                sock = context.wrap_socket(raw, server_hostname=LOOPBACK)
            sock.sendall(_api_versions_request(correlation_id))
            (size,) = struct.unpack(">i", _recv_exact(sock, 4))
            body = _recv_exact(sock, size)
    except (OSError, ConnectionError, struct.error):
        return False
    if len(body) < struct.calcsize(">ih"):
        return False
    got_id, error_code = struct.unpack(">ih", body[:6])
    return bool(got_id == correlation_id and error_code == 0)


def _parse_listeners(value: str) -> list[tuple[str, str, int]]:
    """Parses ``NAME://host:port,...`` into (name, host, port) tuples."""
    parsed = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        match = re.fullmatch(r"([A-Za-z0-9_]+)://(\[[^\]]*\]|[^:]*):(\d+)", item)
        if match is None:
            raise ValueError(f"cannot parse listener {item!r}: use NAME://host:port")
        parsed.append((match.group(1).upper(), match.group(2), int(match.group(3))))
    return parsed


def _format_listeners(listeners: Sequence[tuple[str, str, int]]) -> str:
    return ",".join(f"{name}://{host}:{port}" for name, host, port in listeners)


def _read_properties(path: Path) -> dict[str, str]:
    props = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


def _escape_property(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


# --------------------------------------------------------------------------- #
# The broker
# --------------------------------------------------------------------------- #


class LocalKafka:
    """One single-node KRaft Kafka broker (broker + controller in one JVM).

    Files in ``data_dir``: ``server.properties``, ``log4j2.properties``,
    ``broker.log`` (JVM stdout/stderr), ``broker.pid`` and ``kraft-logs/``.

    The default client listener is ``PLAINTEXT://127.0.0.1:<port>``. To run a
    SASL_SSL/SSL broker, override ``listeners`` (and
    ``listener.security.protocol.map``, ``inter.broker.listener.name``,
    ``sasl.*``, ``ssl.*``, ``listener.name.*``) through ``extra_properties``;
    the ``CONTROLLER`` listener is always added as PLAINTEXT on loopback. SCRAM
    users that the broker itself needs (inter-broker SASL) must exist before it
    starts: pass ``format_args=["--add-scram", "SCRAM-SHA-512=[name=admin,
    password=secret]"]``.

    Example::

        with LocalKafka(free_port(), Path("/tmp/k")) as kafka:
            producer = KafkaProducer(bootstrap_servers=kafka.bootstrap)
    """

    def __init__(
        self,
        port: int,
        data_dir: Path | str,
        extra_properties: Mapping[str, str] | None = None,
        *,
        controller_port: int | None = None,
        format_args: Sequence[str] = (),
        jvm_options: Sequence[str] = (),
    ) -> None:
        """Configures (but does not start) a broker.

        Args:
            port: Client port on 127.0.0.1 (what ``bootstrap`` points at).
            data_dir: Directory for config, log, pid file and Kafka data.
            extra_properties: server.properties entries that override the
                single-node defaults (listeners, security, ssl.*, sasl.*, ...).
            controller_port: Port of the KRaft controller listener; a free one
                is picked at start() when None.
            format_args: Extra arguments for ``kafka-storage format`` (e.g.
                ``--add-scram``); used only when the data dir is new.
            jvm_options: Extra JVM options, appended after the defaults.

        Raises:
            ValueError: extra_properties overrides a reserved KRaft key or
                binds a listener to something other than 127.0.0.1.
        """
        self.port = port
        self.data_dir = Path(data_dir).resolve()
        self.extra_properties = dict(extra_properties or {})
        self.controller_port = controller_port
        self.format_args = list(format_args)
        self.jvm_options = list(jvm_options)
        self._proc: subprocess.Popen[bytes] | None = None
        self._check_extra_properties()

    @classmethod
    def from_data_dir(cls, data_dir: Path | str) -> LocalKafka:
        """Rebuilds a handle on a broker from its data dir's server.properties.

        Args:
            data_dir: A directory a previous start() wrote into.

        Returns:
            A LocalKafka whose port and properties match the written config.

        Raises:
            FileNotFoundError: The directory holds no server.properties.
        """
        path = Path(data_dir).resolve() / "server.properties"
        props = _read_properties(path)
        listeners = _parse_listeners(props["listeners"])
        controller = [p for n, _, p in listeners if n == CONTROLLER_LISTENER]
        clients = [p for n, _, p in listeners if n != CONTROLLER_LISTENER]
        extra = {k: v for k, v in props.items() if k not in RESERVED_KEYS}
        return cls(
            clients[0],
            data_dir,
            extra,
            controller_port=controller[0] if controller else None,
        )

    # -- paths and properties ------------------------------------------------ #

    @property
    def bootstrap(self) -> str:
        """The bootstrap address clients use, ``127.0.0.1:<port>``."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def log_path(self) -> Path:
        """The broker's log file (JVM stdout and stderr)."""
        return self.data_dir / "broker.log"

    @property
    def pid_path(self) -> Path:
        """The file holding the broker JVM's pid while it runs."""
        return self.data_dir / "broker.pid"

    @property
    def properties_path(self) -> Path:
        """The generated server.properties."""
        return self.data_dir / "server.properties"

    @property
    def pid(self) -> int | None:
        """The pid recorded in the pid file, or None."""
        with contextlib.suppress(OSError, ValueError):
            return int(self.pid_path.read_text().strip())
        return None

    def _check_extra_properties(self) -> None:
        reserved = RESERVED_KEYS.intersection(self.extra_properties)
        if reserved:
            raise ValueError(
                f"these keys are managed by LocalKafka and cannot be overridden: {sorted(reserved)}"
            )
        for key in ("listeners", "advertised.listeners"):
            for name, host, _ in _parse_listeners(self.extra_properties.get(key, "")):
                if host != LOOPBACK and name != CONTROLLER_LISTENER:
                    raise ValueError(
                        f"{key}: listener {name} binds {host or 'all interfaces'};"
                        f" use {LOOPBACK} (the local broker listens on loopback only)"
                    )

    def _client_listeners(self) -> list[tuple[str, str, int]]:
        listeners = _parse_listeners(
            self.extra_properties.get("listeners", f"PLAINTEXT://{LOOPBACK}:{self.port}")
        )
        return [item for item in listeners if item[0] != CONTROLLER_LISTENER]

    def _protocol_map(self) -> dict[str, str]:
        pairs = self.extra_properties.get("listener.security.protocol.map", "")
        mapping = {
            name.strip().upper(): proto.strip().upper()
            for name, proto in (p.split(":", 1) for p in pairs.split(",") if ":" in p)
        }
        for name, _, _ in self._client_listeners():
            mapping.setdefault(name, name)  # PLAINTEXT, SSL, SASL_SSL, ...
        mapping[CONTROLLER_LISTENER] = "PLAINTEXT"
        return mapping

    def build_properties(self) -> dict[str, str]:
        """Returns the full server.properties content as a dict.

        Raises:
            LocalKafkaError: No client listener uses ``port``.
        """
        if self.controller_port is None:
            raise LocalKafkaError("controller_port is not set (call start())")
        clients = self._client_listeners()
        if self.port not in {port for _, _, port in clients}:
            raise LocalKafkaError(f"no listener uses port {self.port}: listeners={clients}")
        controller = (CONTROLLER_LISTENER, LOOPBACK, self.controller_port)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{LOOPBACK}:{self.controller_port}",
            "controller.listener.names": CONTROLLER_LISTENER,
            "log.dirs": str(self.data_dir / "kraft-logs"),
            **SINGLE_NODE_DEFAULTS,
            **self.extra_properties,
        }
        if "security.inter.broker.protocol" not in props:
            props.setdefault("inter.broker.listener.name", clients[0][0])
        props["listeners"] = _format_listeners([*clients, controller])
        props.setdefault("advertised.listeners", _format_listeners(clients))
        props["listener.security.protocol.map"] = ",".join(
            f"{name}:{proto}" for name, proto in self._protocol_map().items()
        )
        return props

    def _write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            "# Generated by deploy/kafka/localkafka.py; rewritten on every start.",
            *(f"{k}={_escape_property(v)}" for k, v in self.build_properties().items()),
        ]
        self.properties_path.write_text("\n".join(lines) + "\n")
        (self.data_dir / "log4j2.properties").write_text(LOG4J2_CONFIG)

    # -- lifecycle ------------------------------------------------------------ #

    def _java_base(self, libs: Path, options: Sequence[str] = ()) -> list[str]:
        """Returns ``java <options> -cp <libs>/*`` ready for a main class."""
        log4j = self.data_dir / "log4j2.properties"
        return [
            java_executable(),
            *FAST_START_OPTIONS,
            f"-Dlog4j2.configurationFile={log4j}",
            *options,
            "-cp",
            f"{libs}{os.sep}*",
        ]

    def _format_storage(self, libs: Path) -> None:
        if (self.data_dir / "kraft-logs" / "meta.properties").is_file():
            return
        command = [
            *self._java_base(libs),
            "kafka.tools.StorageTool",
            "format",
            "--ignore-formatted",
            "--cluster-id",
            _random_cluster_id(),
            "--config",
            str(self.properties_path),
            *self.format_args,
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            output = (result.stdout + result.stderr)[-4000:]
            raise LocalKafkaError(
                f"formatting the Kafka storage in {self.data_dir} failed"
                f" (exit {result.returncode}):\n{output}"
            )

    def _spawn(self, libs: Path) -> int:
        command = [
            *self._java_base(libs, [*JVM_OPTIONS, *self.jvm_options]),
            "kafka.Kafka",
            str(self.properties_path),
        ]
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- localkafka: starting broker on {self.bootstrap} ---\n".encode())
            log.flush()
            offset = log.tell()
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
            )
        self.pid_path.write_text(f"{self._proc.pid}\n")
        return offset

    def start(self, timeout: float = 60.0) -> bool:
        """Starts the broker and waits until it answers Kafka requests.

        Idempotent: does nothing if this data dir's broker is already running
        and answering.

        Args:
            timeout: Seconds to wait for the broker to become ready.

        Returns:
            True if a broker was started, False if one was already running.

        Raises:
            LocalKafkaError: Java or the jars are missing, the port is taken, or
                the broker did not come up in time (the message has the log tail).
        """
        if self.is_running():
            return False
        self._stop_stale()
        self._ensure_port_free(self.port)
        libs = provision()
        if self.controller_port is None:
            self.controller_port = free_port()
        self._ensure_port_free(self.controller_port)
        self._write_config()
        self._format_storage(libs)
        offset = self._spawn(libs)
        try:
            self._wait_ready(offset, timeout)
        except BaseException:
            self.stop()
            raise
        return True

    def _ensure_port_free(self, port: int) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex((LOOPBACK, port)) == 0:
                raise LocalKafkaError(
                    f"port {port} on {LOOPBACK} is already in use: stop whatever"
                    " listens there or choose another port"
                    " (--port / NETFRAUD_KAFKA_PORT)"
                )

    def _stop_stale(self) -> None:
        """Stops a broker of this data dir that runs but does not answer."""
        if self.pid is not None and _pid_is_our_broker(self.pid, self.properties_path):
            self.stop()
        self.pid_path.unlink(missing_ok=True)

    def _use_tls(self) -> bool:
        names = {name for name, _, port in self._client_listeners() if port == self.port}
        protocols = {self._protocol_map().get(name, name) for name in names}
        return bool(protocols & {"SSL", "SASL_SSL"})

    def _answers(self) -> bool:
        """Probes the client port with ApiVersions (TCP connect under mTLS)."""
        if not self._use_tls():
            return probe_api_versions(self.port)
        props = self.build_properties() if self.controller_port else {}
        if any(
            k.endswith("ssl.client.auth") and v == "required" for k, v in props.items()
        ):  # no client certificate here: the TLS handshake would fail
            with contextlib.suppress(OSError):
                socket.create_connection((LOOPBACK, self.port), timeout=2.0).close()
                return True
            return False
        return probe_api_versions(self.port, use_tls=True)

    def _log_says_started(self, offset: int) -> bool:
        with contextlib.suppress(OSError), open(self.log_path, "rb") as log:
            log.seek(offset)
            return STARTED_MARKER in log.read()
        return False

    def _wait_ready(self, offset: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise LocalKafkaError(
                    f"the Kafka broker exited with code {self._proc.returncode}"
                    f" during start; last log lines ({self.log_path}):\n" + self.tail_log(40)
                )
            if self._log_says_started(offset) and self._answers():
                return
            time.sleep(0.2)
        raise LocalKafkaError(
            f"the Kafka broker did not answer on {self.bootstrap} within"
            f" {timeout:.0f}s; last log lines ({self.log_path}):\n" + self.tail_log(40)
        )

    def is_running(self) -> bool:
        """Tells whether this data dir's broker process is alive and answering."""
        pid = self.pid
        if pid is None or not _pid_is_our_broker(pid, self.properties_path):
            return False
        return self._answers()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> bool:
        """Stops the broker: SIGTERM to its process group, SIGKILL after timeout.

        Idempotent: a no-op when nothing runs.

        Args:
            timeout: Seconds to wait for a clean shutdown before SIGKILL.

        Returns:
            True if a process was stopped, False if none was running.
        """
        pid = self.pid if self._proc is None else self._proc.pid
        if pid is None or not _pid_is_our_broker(pid, self.properties_path):
            self._forget()
            return False
        self._signal_group(pid, signal.SIGTERM)
        if not self._wait_exit(pid, timeout):
            self._signal_group(pid, signal.SIGKILL)
            self._wait_exit(pid, 5.0)
        self._forget()
        return True

    @staticmethod
    def _signal_group(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            try:
                os.killpg(os.getpgid(pid), sig)
            except PermissionError:
                os.kill(pid, sig)

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while _pid_alive(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    def _forget(self) -> None:
        if self._proc is not None:
            self._proc.poll()  # reap it if it already exited
        self._proc = None
        self.pid_path.unlink(missing_ok=True)

    def tail_log(self, n_lines: int = 80) -> str:
        """Returns the last ``n_lines`` lines of the broker log ('' if none)."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                size = log.tell()
                chunk = min(size, max(65536, n_lines * 400))
                log.seek(size - chunk)
                data = log.read()
        except OSError:
            return ""
        lines = data.decode("utf-8", errors="replace").splitlines()
        return "\n".join(lines[-n_lines:])

    def __enter__(self) -> LocalKafka:
        """Starts the broker; ``with LocalKafka(...) as kafka:`` stops it after."""
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Stops the broker."""
        self.stop()

    def __repr__(self) -> str:
        """Shows the bootstrap address and data dir."""
        return f"LocalKafka(bootstrap={self.bootstrap!r}, data_dir='{self.data_dir}')"


# --------------------------------------------------------------------------- #
# CLI
# --------------------------------------------------------------------------- #


def _default_port() -> int:
    return int(os.environ.get("NETFRAUD_KAFKA_PORT", "9092"))


def _default_dir() -> Path:
    return Path(os.environ.get("NETFRAUD_KAFKA_DIR", ".kafka"))


def _existing(data_dir: Path) -> LocalKafka | None:
    if not (data_dir / "server.properties").is_file():
        return None
    return LocalKafka.from_data_dir(data_dir)


def _cmd_provision(args: argparse.Namespace) -> int:
    libs = provision()
    print(f"Kafka {kafka_version()} jars: {libs}")
    return 0


def _cmd_start(args: argparse.Namespace) -> int:
    running = _existing(args.data_dir)
    if running is not None and running.is_running():
        print(f"Kafka already running on {running.bootstrap} (pid {running.pid})")
        return 0
    kafka = LocalKafka(args.port, args.data_dir)
    began = time.monotonic()
    kafka.start(timeout=args.timeout)
    print(
        f"Kafka {kafka_version()} started on {kafka.bootstrap} (pid {kafka.pid})"
        f" in {time.monotonic() - began:.1f}s; log: {kafka.log_path}"
    )
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    kafka = _existing(args.data_dir)
    if kafka is not None and kafka.stop():
        print(f"Kafka on {kafka.bootstrap} stopped")
    else:
        print(f"Kafka not running (data dir {args.data_dir})")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    kafka = _existing(args.data_dir)
    if kafka is not None and kafka.is_running():
        print(f"Kafka running on {kafka.bootstrap} (pid {kafka.pid})")
        return 0
    print(f"Kafka not running (data dir {args.data_dir})")
    return 1


def build_parser() -> argparse.ArgumentParser:
    """Returns the CLI argument parser."""
    parser = argparse.ArgumentParser(
        prog="localkafka.py",
        description="Local single-node Apache Kafka broker (KRaft, 127.0.0.1 only).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("provision", help="download the broker jars (idempotent)")
    for name, text in [
        ("start", "start the broker in the background (idempotent)"),
        ("stop", "stop the broker (idempotent)"),
        ("status", "exit 0 if the broker runs and answers, else 1"),
    ]:
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument(
            "--data-dir",
            type=Path,
            default=_default_dir(),
            help="config, log and data directory (default: $NETFRAUD_KAFKA_DIR or .kafka)",
        )
        if name == "start":
            cmd.add_argument(
                "--port",
                type=int,
                default=_default_port(),
                help="client port (default: $NETFRAUD_KAFKA_PORT or 9092)",
            )
            cmd.add_argument("--timeout", type=float, default=60.0, help="seconds to wait")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the process exit code."""
    args = build_parser().parse_args(argv)
    handlers = {
        "provision": _cmd_provision,
        "start": _cmd_start,
        "stop": _cmd_stop,
        "status": _cmd_status,
    }
    try:
        return handlers[args.command](args)
    except (LocalKafkaError, ValueError) as exc:
        print(f"localkafka: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
