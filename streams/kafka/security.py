"""Connection security for every client the project makes: one mapping from settings to each library.

The same four settings (``MMSR_SECURITY_PROTOCOL``, ``MMSR_SASL_MECHANISM``, ``MMSR_SASL_USERNAME``,
``MMSR_SASL_PASSWORD``, plus ``MMSR_SSL_CAFILE``) reach confluent-kafka (producers, replay, admin,
``recs tail``) through ``client_config`` and Faust/aiokafka (the worker) through
``faust_credentials``, so no client can be left on plaintext by accident.
"""
from __future__ import annotations

import re
import time

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class ConnectionProblem(RuntimeError):
    """The broker cannot be used with these settings; the message is one line for the user."""


def uses_sasl(settings) -> bool:
    return settings.security_protocol.startswith("SASL_")


def uses_tls(settings) -> bool:
    return settings.security_protocol in ("SSL", "SASL_SSL")


def client_config(settings) -> dict:
    """librdkafka keys for ``settings``' connection: bootstrap servers and security."""
    config = {"bootstrap.servers": settings.bootstrap_servers, "security.protocol": settings.security_protocol}
    if uses_sasl(settings):
        config.update({"sasl.mechanism": settings.sasl_mechanism, "sasl.username": settings.sasl_username,
                       "sasl.password": settings.sasl_password.get_secret_value()})
    if uses_tls(settings) and settings.ssl_cafile:
        config["ssl.ca.location"] = str(settings.ssl_cafile)
    return config


def security_config(settings) -> dict:
    """``client_config`` without the bootstrap servers: for clients that take those apart."""
    return {k: v for k, v in client_config(settings).items() if k != "bootstrap.servers"}


def ssl_context(settings):
    """The TLS context aiokafka uses: the system's trust store, or only ``ssl_cafile``'s CA."""
    import ssl

    return ssl.create_default_context(cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None)


def faust_credentials(settings):
    """Faust's ``broker_credentials`` for these settings (None: plaintext)."""
    import faust

    if uses_sasl(settings):
        return faust.SASLCredentials(username=settings.sasl_username,
                                     password=settings.sasl_password.get_secret_value(),
                                     mechanism=settings.sasl_mechanism,
                                     ssl_context=ssl_context(settings) if uses_tls(settings) else None)
    if uses_tls(settings):
        return faust.SSLCredentials(ssl_context(settings))
    return None


FATAL_CODES = ("_AUTHENTICATION", "SASL_AUTHENTICATION_FAILED", "_SSL", "TOPIC_AUTHORIZATION_FAILED",
               "CLUSTER_AUTHORIZATION_FAILED", "GROUP_AUTHORIZATION_FAILED", "_INVALID_ARG")


def check_connection(settings, timeout: float = 20.0) -> None:
    """Fail fast, in one line, when the broker rejects these credentials or cannot be reached.

    librdkafka retries authentication and TLS failures forever and only logs them, so every
    command checks first: a wrong password is an error the user reads, not a hang.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    errors = []
    try:
        admin = AdminClient({**client_config(settings), "log_level": 0, "error_cb": errors.append,
                             "socket.connection.setup.timeout.ms": int(timeout * 1000)})
    except KafkaException as exc:  # a setting librdkafka rejects (mechanism, missing CA file)
        raise ConnectionProblem(f"invalid Kafka client settings: {exc.args[0].str()}") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if admin.list_topics(timeout=1.0).brokers:
                return
        except KafkaException as exc:
            errors.append(exc.args[0])
        admin.poll(0.1)  # serves error_cb: that is where authentication and TLS failures arrive
        fatal = [e for e in errors if e.name() in FATAL_CODES]
        if fatal:
            raise ConnectionProblem(f"Kafka at {settings.bootstrap_servers} refused the connection "
                                    f"({settings.security_protocol}): {describe(fatal[-1])}")
    last = describe(errors[-1]) if errors else "no answer"
    raise ConnectionProblem(f"Kafka at {settings.bootstrap_servers} not reachable within {timeout:.0f}s "
                            f"({settings.security_protocol}): {last}")


def describe(error) -> str:
    """librdkafka's message without its broker-id prefix, on one line."""
    text = error.str() if hasattr(error, "str") else str(error)
    text = re.sub(r"^\S+://\S+/(bootstrap|\d+): ", "", text)
    return " ".join(text.split())
