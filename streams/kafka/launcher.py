"""Local single-node Apache Kafka (KRaft) started from jars that Maven resolves from Maven Central.

The jars are cached outside the repo (``kafka_home/<version>/libs``), so only the first start
needs the network. The broker runs as its own process session so it outlives the CLI call that
started it; ``broker.json`` in the data dir records its pid and ports for ``status`` and ``stop``.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

TOOLS = {
    "kafka-topics": "org.apache.kafka.tools.TopicCommand",
    "kafka-consumer-groups": "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
    "kafka-console-consumer": "org.apache.kafka.tools.consumer.ConsoleConsumer",
    "kafka-console-producer": "org.apache.kafka.tools.ConsoleProducer",
    "kafka-get-offsets": "org.apache.kafka.tools.GetOffsetShell",
    "kafka-storage": "kafka.tools.StorageTool",
}


class LauncherError(RuntimeError):
    """A failure the CLI reports as one line."""


@dataclass(frozen=True)
class BrokerInfo:
    pid: int
    port: int
    controller_port: int
    version: str
    data_dir: str
    security_protocol: str = "PLAINTEXT"
    ca_file: str | None = None  # with SASL_SSL: the CA that signed the broker's certificate

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is not a running broker
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class LocalKafka:
    """Start, stop and query one local broker; run Kafka's own tools from the same jars."""

    def __init__(self, data_dir: Path, version: str = "4.1.1", kafka_home: Path | None = None):
        self.data_dir = Path(data_dir).resolve()
        self.version = version
        self.kafka_home = Path(kafka_home or Path("~/.cache/mmsr/kafka").expanduser())
        self.info_file = self.data_dir / "broker.json"

    # -- jars -------------------------------------------------------------------------------
    @property
    def libs(self) -> Path:
        return self.kafka_home / self.version / "libs"

    def ensure_jars(self) -> Path:
        """Resolve the broker and tools jars with Maven once; later calls use the cache."""
        marker = self.libs / ".complete"
        if marker.exists():
            return self.libs
        if shutil.which("mvn") is None:
            raise LauncherError("Maven (mvn) is needed once to fetch the Kafka jars; install it or set MMSR_KAFKA_HOME")
        tmp = self.libs.with_name(f"libs.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        with resources.as_file(resources.files("streams.kafka") / "pom.xml") as pom:
            cmd = ["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
                   f"-DoutputDirectory={tmp}", "-DincludeScope=runtime", f"-Dkafka.version={self.version}"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise LauncherError(f"Maven could not resolve Kafka {self.version}: {(proc.stdout + proc.stderr).strip()[-400:]}")
        shutil.rmtree(self.libs, ignore_errors=True)
        tmp.rename(self.libs)
        marker.touch()
        return self.libs

    def java(self, main_class: str, *args: str, heap: str = "256m", **popen) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise LauncherError("Java 17+ is needed to run Kafka; none found on PATH")
        return [java, f"-Xmx{heap}", "-cp", f"{self.libs}/*", main_class, *args]

    def run_tool(self, tool: str, args: list[str]) -> int:
        """Run one of Kafka's command-line tools (kafka-topics, kafka-consumer-groups, ...)."""
        if tool not in TOOLS:
            raise LauncherError(f"unknown tool {tool!r}; known: {', '.join(sorted(TOOLS))}")
        self.ensure_jars()
        log4j = self._log4j_config()
        cmd = self.java(TOOLS[tool], *args)
        cmd.insert(1, f"-Dlog4j2.configurationFile={log4j}")
        cmd.insert(1, f"-Dkafka.logs.dir={self.data_dir}")
        return subprocess.call(cmd)

    # -- lifecycle --------------------------------------------------------------------------
    def status(self) -> BrokerInfo | None:
        if not self.info_file.exists():
            return None
        info = BrokerInfo(**json.loads(self.info_file.read_text()))
        return info if pid_alive(info.pid) else None

    def start(self, port: int = 9092, controller_port: int | None = None, timeout: float = 60.0,
              sasl_users: dict[str, str] | None = None, initial_rebalance_delay_ms: int = 0) -> BrokerInfo:
        """Start the broker (port 0 picks a free one) and return once it answers metadata requests.

        ``initial_rebalance_delay_ms``: how long a group with no members waits for more before its
        first assignment. Kafka's default is 3,000; 0 here, so a test's worker starts at once.

        With ``sasl_users`` (name: password) the client listener is SASL_SSL and accepts PLAIN,
        SCRAM-SHA-256 and SCRAM-SHA-512 for them; its TLS certificate is made with keytool at start.
        """
        running = self.status()
        if running:
            return running
        self.ensure_jars()
        tls = self._make_tls() if sasl_users else None
        if port == 0:
            port = free_port()
        elif not port_is_free(port):
            raise LauncherError(f"port {port} on 127.0.0.1 is busy; stop what holds it or pass --port 0 for a free port")
        controller_port = controller_port or free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        logs = self.data_dir / "logs"
        props = self.data_dir / "server.properties"
        text = self._server_properties(port, controller_port, logs, initial_rebalance_delay_ms)
        if tls:
            text = sasl_ssl_properties(text, port, controller_port, tls, sasl_users)
        props.write_text(text)
        props.chmod(0o600)  # with SASL it holds the broker's secrets
        if not (logs / "meta.properties").exists():
            self._format(props)
        log4j = self._log4j_config()
        cmd = self.java("kafka.Kafka", str(props), heap="768m")
        cmd[1:1] = [f"-Dkafka.logs.dir={self.data_dir}", f"-Dlog4j2.configurationFile={log4j}",
                    "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true"]
        with open(self.data_dir / "stdout.log", "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        info = BrokerInfo(proc.pid, port, controller_port, self.version, str(self.data_dir),
                          "SASL_SSL" if tls else "PLAINTEXT", str(tls.ca_file) if tls else None)
        self.info_file.write_text(json.dumps(asdict(info)))
        client = {}
        if tls:
            name, password = next(iter(sasl_users.items()))
            client = {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.username": name,
                      "sasl.password": password, "ssl.ca.location": str(tls.ca_file)}
        self._wait_ready(info, proc, timeout, client)
        if sasl_users:
            self._add_scram_users(info, client, sasl_users, timeout)
        return info

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM for a controlled shutdown; SIGKILL only if it does not end in time."""
        info = self.status()
        if info is None:
            self.info_file.unlink(missing_ok=True)
            return False
        os.kill(info.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(info.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_alive(info.pid):
            os.killpg(info.pid, signal.SIGKILL)
            while pid_alive(info.pid):
                time.sleep(0.1)
        self.info_file.unlink(missing_ok=True)
        return True

    # -- helpers ----------------------------------------------------------------------------
    def _format(self, props: Path) -> None:
        cluster_id = _cluster_id()
        cmd = self.java(TOOLS["kafka-storage"], "format", "-t", cluster_id, "-c", str(props), "--ignore-formatted")
        cmd.insert(1, f"-Dlog4j2.configurationFile={self._log4j_config()}")
        cmd.insert(1, f"-Dkafka.logs.dir={self.data_dir}")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise LauncherError(f"kafka-storage format failed: {(proc.stdout + proc.stderr).strip()[-400:]}")

    @staticmethod
    def _add_scram_users(info: BrokerInfo, client: dict, users: dict[str, str], timeout: float) -> None:
        """SCRAM credentials through the Admin API, once the broker answers over PLAIN. They used to
        go on kafka-storage's command line (``--add-scram ...password=...``), where ``ps`` shows
        them to every user of the machine; the API keeps them in the connection."""
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import (AdminClient, ScramCredentialInfo, ScramMechanism,
                                           UserScramCredentialUpsertion)

        admin = AdminClient({"bootstrap.servers": info.bootstrap, "log_level": 0, **client})
        mechanisms = (ScramMechanism.SCRAM_SHA_256, ScramMechanism.SCRAM_SHA_512)
        for mechanism in mechanisms:  # one credential per user and request: the broker refuses two
            upserts = [UserScramCredentialUpsertion(name, ScramCredentialInfo(mechanism, 8192), password.encode())
                       for name, password in users.items()]
            for future in admin.alter_user_scram_credentials(upserts, request_timeout=timeout).values():
                future.result()
        deadline = time.monotonic() + timeout  # applied through the metadata log: wait until they are listed
        while time.monotonic() < deadline:
            futures = admin.describe_user_scram_credentials(list(users), request_timeout=timeout)
            try:
                if all(len(future.result().scram_credential_infos) == len(mechanisms) for future in futures.values()):
                    return
            except KafkaException:  # a user not listed yet
                pass
            time.sleep(0.2)
        raise LauncherError(f"the broker did not list the SCRAM users {sorted(users)} within {timeout:.0f}s")

    def _log4j_config(self) -> Path:
        target = self.data_dir / "log4j2.properties"
        if not target.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            target.write_text((resources.files("streams.kafka") / "log4j2.properties").read_text())
        return target

    @staticmethod
    def _server_properties(port: int, controller_port: int, logs: Path, initial_rebalance_delay_ms: int = 0) -> str:
        return "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={logs}",
            "num.partitions=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            f"group.initial.rebalance.delay.ms={initial_rebalance_delay_ms}",
            "auto.create.topics.enable=true",
            "message.max.bytes=1048588",
            "",
        ])

    def _make_tls(self) -> "BrokerTLS":
        """A throwaway CA and a broker certificate for 127.0.0.1/localhost, made with Java's keytool.

        Made fresh at every start into DATA_DIR/tls (mode 0700) with a random store password:
        nothing secret is in the repo, and clients trust ``ca.pem`` only.
        """
        keytool = shutil.which("keytool")
        if keytool is None:
            raise LauncherError("Java's keytool is needed for a SASL_SSL broker; none found on PATH")
        tls_dir = self.data_dir / "tls"
        shutil.rmtree(tls_dir, ignore_errors=True)
        tls_dir.mkdir(parents=True, mode=0o700)
        password = secrets.token_urlsafe(18)
        ca, broker, ca_pem, broker_pem = (tls_dir / n for n in ("ca.p12", "broker.p12", "ca.pem", "broker.pem"))
        # keytool reads the store password from its environment (":env"), not its command line, which ps shows
        common = ["-storetype", "PKCS12", "-storepass:env", KEYTOOL_PASSWORD, "-keypass:env", KEYTOOL_PASSWORD,
                  "-noprompt"]
        environment = {**os.environ, KEYTOOL_PASSWORD: password}

        def run(*args: str, stdin: bytes | None = None) -> bytes:
            proc = subprocess.run([keytool, *args], input=stdin, capture_output=True, env=environment)
            if proc.returncode != 0:
                raise LauncherError(f"keytool {args[0]} failed: {(proc.stdout + proc.stderr).decode(errors='replace').strip()[-300:]}")
            return proc.stdout

        run("-genkeypair", "-alias", "ca", "-dname", "CN=mmsr local CA", "-ext", "bc:c", "-keyalg", "RSA",
            "-keysize", "2048", "-validity", "30", "-keystore", str(ca), *common)
        run("-exportcert", "-alias", "ca", "-rfc", "-file", str(ca_pem), "-keystore", str(ca), *common)
        run("-genkeypair", "-alias", "broker", "-dname", "CN=localhost", "-keyalg", "RSA", "-keysize", "2048",
            "-validity", "30", "-keystore", str(broker), *common)
        request = run("-certreq", "-alias", "broker", "-keystore", str(broker), *common)
        broker_pem.write_bytes(run("-gencert", "-alias", "ca", "-rfc", "-validity", "30",
                                   "-ext", "SAN=ip:127.0.0.1,dns:localhost", "-keystore", str(ca), *common,
                                   stdin=request))
        run("-importcert", "-alias", "ca", "-file", str(ca_pem), "-keystore", str(broker), *common)
        run("-importcert", "-alias", "broker", "-file", str(broker_pem), "-keystore", str(broker), *common)
        return BrokerTLS(broker, password, ca_pem)

    def _wait_ready(self, info: BrokerInfo, proc: subprocess.Popen, timeout: float, client: dict) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        admin = AdminClient({"bootstrap.servers": info.bootstrap, "log_level": 0, **client})
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.info_file.unlink(missing_ok=True)
                tail = (self.data_dir / "stdout.log").read_text(errors="replace")[-600:]
                raise LauncherError(f"broker exited with code {proc.returncode}: {tail.strip()}")
            try:
                if admin.list_topics(timeout=1.0).brokers and self._coordinator_ready(admin):
                    return
            except Exception:
                time.sleep(0.2)
        raise LauncherError(f"broker did not answer on {info.bootstrap} within {timeout:.0f}s; see {self.data_dir}/logs")

    @staticmethod
    def _coordinator_ready(admin) -> bool:
        """A new broker creates __consumer_offsets on the first group lookup and answers
        'coordinator not available / load in progress' until it is loaded; ``start`` returns only
        once a group lookup succeeds, so the first worker joins its group without retrying."""
        future = admin.describe_consumer_groups(["mmsr-launcher-probe"], request_timeout=5)["mmsr-launcher-probe"]
        try:
            future.result()
            return True
        except Exception:
            time.sleep(0.3)
            return False


KEYTOOL_PASSWORD = "MMSR_KEYTOOL_STOREPASS"


@dataclass(frozen=True)
class BrokerTLS:
    keystore: Path
    password: str
    ca_file: Path


def sasl_ssl_properties(plain: str, port: int, controller_port: int, tls: BrokerTLS, users: dict[str, str]) -> str:
    """The plaintext broker's properties with its client listener turned into SASL_SSL.

    The broker talks to itself over the same listener as a generated ``broker`` PLAIN user; the
    given users get PLAIN passwords here and SCRAM credentials once it answers (``_add_scram_users``).
    """
    def quoted(value: str) -> str:
        if '"' in value or "\\" in value:
            raise LauncherError("SASL user names and passwords for the local broker cannot contain quotes or backslashes")
        return f'"{value}"'

    broker_password = secrets.token_urlsafe(18)
    accounts = {"broker": broker_password, **users}
    plain_users = " ".join(f"user_{name}={quoted(password)}" for name, password in accounts.items())
    jaas = "org.apache.kafka.common.security.plain.PlainLoginModule required " \
           f'username="broker" password={quoted(broker_password)} {plain_users};'
    replaced = {
        "listeners": f"SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"SASL_SSL://127.0.0.1:{port}",
        "inter.broker.listener.name": "SASL_SSL",
        "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
    }
    lines = [f"{k}={replaced[k]}" if (k := line.split("=", 1)[0]) in replaced else line for line in plain.splitlines()]
    lines += [
        "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
        "sasl.mechanism.inter.broker.protocol=PLAIN",
        f"listener.name.sasl_ssl.plain.sasl.jaas.config={jaas}",
        "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "ssl.keystore.type=PKCS12", f"ssl.keystore.location={tls.keystore}", f"ssl.keystore.password={tls.password}",
        f"ssl.key.password={tls.password}",
        "ssl.truststore.type=PKCS12", f"ssl.truststore.location={tls.keystore}", f"ssl.truststore.password={tls.password}",
        "",
    ]
    return "\n".join(lines)


def _cluster_id(random_bytes=lambda: uuid.uuid4().bytes) -> str:
    """A Kafka-style base64 cluster id. Like Kafka's own Uuid.randomUuid, ids that begin
    with '-' are drawn again: kafka-storage would read one (1 draw in 64) as an option."""
    import base64

    while True:
        cluster_id = base64.urlsafe_b64encode(random_bytes()).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id
