"""Settings: file, environment and flags, in rising priority; errors name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from detector.errors import ConfigError
from detector.settings import load_settings


def test_defaults_validate() -> None:
    """With no sources at all, the defaults form valid settings."""
    settings = load_settings(environ={})
    assert settings.consumer.group_id == "netfraud"
    assert settings.topics.input == ("netfraud.flows",)


def test_priority_is_file_then_environment_then_flags(tmp_path: Path) -> None:
    """A flag beats the environment, which beats the file."""
    config = tmp_path / "netfraud.toml"
    config.write_text('[consumer]\ngroup_id = "from-file"\nmax_batch_records = 10\n')
    env = {"NETFRAUD_CONSUMER__GROUP_ID": "from-env", "NETFRAUD_CONSUMER__MAX_BATCH_WAIT_MS": "7"}
    settings = load_settings(config, {"consumer.group_id": "from-flag"}, env)
    assert settings.consumer.group_id == "from-flag"
    assert settings.consumer.max_batch_wait_ms == 7
    assert settings.consumer.max_batch_records == 10


def test_unknown_key_in_file_is_named_with_known_keys(tmp_path: Path) -> None:
    """A misspelt key is refused, and the error lists what is allowed."""
    config = tmp_path / "netfraud.toml"
    config.write_text("[consumer]\nmax_batch_recods = 10\n")
    with pytest.raises(ConfigError, match=r"consumer\.max_batch_recods.*max_batch_records"):
        load_settings(config, environ={})


def test_unknown_environment_variable_is_named() -> None:
    """A NETFRAUD_ variable that maps to no setting is an error naming it."""
    with pytest.raises(ConfigError, match=r"consumer\.groupid"):
        load_settings(environ={"NETFRAUD_CONSUMER__GROUPID": "x"})


def test_invalid_value_names_key_and_value() -> None:
    """A value of the wrong type names the key and what was given."""
    with pytest.raises(ConfigError, match=r"consumer\.max_batch_records.*'many'"):
        load_settings(environ={"NETFRAUD_CONSUMER__MAX_BATCH_RECORDS": "many"})


def test_malformed_environment_variable_explains_the_form() -> None:
    """NETFRAUD_X without a section separator says which form is expected."""
    with pytest.raises(ConfigError, match="NETFRAUD_<SECTION>__<KEY>"):
        load_settings(environ={"NETFRAUD_GROUP": "x"})


def test_secrets_are_masked_in_the_logged_settings() -> None:
    """The password never appears in the settings as logged."""
    settings = load_settings(environ={"NETFRAUD_KAFKA__SASL_PASSWORD": "hunter2"})
    assert "hunter2" not in str(settings.masked())
    assert settings.kafka.password() == "hunter2"


def test_comma_separated_topics_from_environment() -> None:
    """A list of input topics can be given as one comma-separated variable."""
    settings = load_settings(environ={"NETFRAUD_TOPICS__INPUT": "a, b"})
    assert settings.topics.input == ("a", "b")


def test_unknown_record_format_is_refused_naming_the_known_ones(tmp_path: Path) -> None:
    """A misspelt format, global or per topic, fails at start-up, not at the first batch."""
    with pytest.raises(ConfigError, match=r"topics\.format.*'zek'.*zeek"):
        load_settings(environ={"NETFRAUD_TOPICS__FORMAT": "zek"})
    config = tmp_path / "netfraud.toml"
    config.write_text('[topics]\ninput = ["conn"]\nformats = { conn = "suricta" }\n')
    with pytest.raises(ConfigError, match=r"topics\.formats.*'suricta'.*suricata"):
        load_settings(config, environ={})
    config.write_text('[topics]\ninput = ["conn"]\nformats = { conn = "suricata" }\n')
    assert load_settings(config, environ={}).topics.format_of("conn") == "suricata"


def test_a_topic_reader_without_a_broker_names_the_address_and_the_key() -> None:
    """No broker answering is a clear TransportError, not kafka-python's own exception."""
    from detector.errors import TransportError
    from detector.stream.topic_reader import TopicReader

    settings = load_settings(None, {"kafka.bootstrap_servers": "127.0.0.1:1"}, environ={})
    with pytest.raises(TransportError, match=r"127\.0\.0\.1:1.*kafka\.bootstrap_servers"):
        TopicReader(settings, "alerts")
