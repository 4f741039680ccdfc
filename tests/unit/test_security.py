"""The one mapping from settings to each Kafka library's security options."""
from __future__ import annotations

import faust
import pytest
from pydantic import ValidationError

from streams.kafka.security import client_config, faust_credentials, security_config
from streams.settings import Settings


def secured(**extra) -> Settings:
    return Settings(bootstrap_servers="b:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256",
                    sasl_username="alice", sasl_password="s3cret", **extra)


def test_sasl_ssl_reaches_librdkafka_and_faust_alike(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    s = secured(ssl_cafile=ca)
    assert client_config(s) == {"bootstrap.servers": "b:9093", "security.protocol": "SASL_SSL",
                                "sasl.mechanism": "SCRAM-SHA-256", "sasl.username": "alice",
                                "sasl.password": "s3cret", "ssl.ca.location": str(ca)}
    assert "bootstrap.servers" not in security_config(s)
    with pytest.raises(Exception):  # an empty file is no CA: the TLS context refuses it, it is not ignored
        faust_credentials(s)


def test_faust_gets_sasl_over_tls_with_the_system_store():
    creds = faust_credentials(secured())
    assert isinstance(creds, faust.SASLCredentials) and creds.protocol.value == "SASL_SSL"
    assert creds.mechanism.value == "SCRAM-SHA-256" and creds.username == "alice" and creds.password == "s3cret"
    assert faust_credentials(Settings()) is None and client_config(Settings())["security.protocol"] == "PLAINTEXT"


def test_the_password_is_never_shown_but_reaches_a_child_process():
    s = secured()
    assert "s3cret" not in repr(s) and "s3cret" not in str(s.model_dump())
    assert s.to_env()["MMSR_SASL_PASSWORD"] == "s3cret"
    assert Settings(**{k: v for k, v in s.model_dump().items() if k != "sasl_password"},
                    sasl_password=s.to_env()["MMSR_SASL_PASSWORD"]).sasl_password.get_secret_value() == "s3cret"


def test_sasl_without_credentials_is_a_settings_error():
    with pytest.raises(ValidationError, match="MMSR_SASL_USERNAME and MMSR_SASL_PASSWORD"):
        Settings(security_protocol="SASL_PLAINTEXT")
