"""Configuration: the documented example file, validation, overrides and CLI flags."""
from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from engine import cli
from engine.config import (
    Config, ConfigError, LoggingConfig, NetworkConfig, RemoteAE, RetrieveConfig, StorageConfig,
    config_from_mapping, load_config)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "pacs.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pacs.toml"
    path.write_text(text)
    return path


# --- the documented example ---------------------------------------------------------------
def test_example_file_loads_and_equals_the_defaults():
    assert load_config(EXAMPLE) == Config()


def test_example_file_shows_every_option():
    """Every field of every section appears in the example (commented-out doesn't count)."""
    raw = tomllib.loads(EXAMPLE.read_text())
    for section in dataclasses.fields(Config):
        options = {f.name for f in dataclasses.fields(section.default_factory())}
        assert set(raw[section.name]) == options, section.name


def test_no_path_gives_the_defaults():
    assert load_config(None) == Config()


def test_empty_file_gives_the_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == Config()


def test_values_in_the_file_replace_the_defaults(tmp_path):
    config = load_config(write(tmp_path, """
[network]
ae_title = "ARCHIVE"
port = 4242
allowed_calling_ae_titles = ["CT1", "MR2"]
idle_timeout = 30
[storage]
data_dir = "/srv/pacs"
duplicate_policy = "reject"
"""))
    assert config.network.ae_title == "ARCHIVE"
    assert config.network.port == 4242
    assert config.network.allowed_calling_ae_titles == ("CT1", "MR2")
    assert config.network.idle_timeout == 30.0 and isinstance(config.network.idle_timeout, float)
    assert config.storage.data_dir == Path("/srv/pacs")
    assert config.storage.duplicate_policy == "reject"
    assert config.network.host == NetworkConfig().host


# --- refused files ------------------------------------------------------------------------
def test_unknown_section_raises_config_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="netwerk"):
        load_config(write(tmp_path, "[netwerk]\nport = 104\n"))


def test_unknown_option_raises_config_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="prot"):
        load_config(write(tmp_path, "[network]\nprot = 104\n"))


@pytest.mark.parametrize("section, option, value", [
    ("network", "port", '"104"'),
    ("network", "port", "104.0"),
    ("network", "port", "true"),
    ("network", "idle_timeout", '"soon"'),
    ("network", "idle_timeout", "true"),
    ("network", "require_called_ae_title", "1"),
    ("network", "allowed_calling_ae_titles", '"CT1"'),
    ("network", "allowed_calling_ae_titles", "[1, 2]"),
    ("network", "ae_title", "42"),
    ("storage", "group_commit_max", '"many"'),
    ("storage", "duplicate_policy", "1"),
    ("logging", "level", "20"),
])
def test_wrong_type_raises_config_error_naming_the_option(tmp_path, section, option, value):
    with pytest.raises(ConfigError, match=f"{section}.{option}"):
        load_config(write(tmp_path, f"[{section}]\n{option} = {value}\n"))


@pytest.mark.parametrize("section, option, value", [
    ("storage", "duplicate_policy", '"overwrite"'),
    ("network", "ae_title", '""'),
    ("network", "ae_title", '"   "'),
    ("network", "ae_title", '"SEVENTEEN_CHARS__"'),
    ("network", "ae_title", '"BACK\\\\SLASH"'),
    ("network", "loop", '"trio"'),
    ("network", "port", "65536"),
    ("network", "port", "-1"),
    ("network", "max_pdu_length", "4095"),
    ("network", "artim_timeout", "0"),
    ("network", "dimse_timeout", "-5.0"),
    ("storage", "group_commit_max", "0"),
    ("storage", "io_threads", "0"),
])
def test_invalid_value_raises_config_error_naming_the_option(tmp_path, section, option, value):
    with pytest.raises(ConfigError, match=option):
        load_config(write(tmp_path, f"[{section}]\n{option} = {value}\n"))


def test_non_string_data_dir_raises_config_error_naming_the_option(tmp_path):
    with pytest.raises(ConfigError, match="storage.data_dir"):
        load_config(write(tmp_path, "[storage]\ndata_dir = 5\n"))


def test_unknown_logging_level_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match="level"):
        load_config(write(tmp_path, '[logging]\nlevel = "LOUD"\n'))


def test_ae_title_with_a_control_character_raises_config_error():
    with pytest.raises(ConfigError, match="ae_title"):
        config_from_mapping({"network": {"ae_title": "PA\nCS"}})


def test_section_that_is_not_a_table_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match="network"):
        load_config(write(tmp_path, 'network = "fast"\n'))


def test_invalid_toml_raises_config_error(tmp_path):
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, "[network\nport = \n"))


def test_missing_file_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


@pytest.mark.parametrize("ae_title", ["A", "SIXTEEN_CHARS_AE", "PACS 2"])
def test_valid_ae_titles_are_accepted(ae_title):
    assert config_from_mapping({"network": {"ae_title": ae_title}}).network.ae_title == ae_title


@pytest.mark.parametrize("policy", ["keep-first", "replace", "reject"])
def test_every_documented_duplicate_policy_is_accepted(policy):
    config = config_from_mapping({"storage": {"duplicate_policy": policy}})
    assert config.storage.duplicate_policy == policy


def test_config_is_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().network.port = 1  # type: ignore[misc]


# --- overrides -----------------------------------------------------------------------
def test_with_overrides_replaces_only_the_given_values():
    base = config_from_mapping({"network": {"host": "127.0.0.1", "max_associations": 8}})
    changed = base.with_overrides(network={"port": 104})
    assert changed.network == dataclasses.replace(base.network, port=104)
    assert changed.storage == base.storage and changed.logging == base.logging


def test_with_overrides_ignores_none_values():
    base = Config()
    changed = base.with_overrides(network={"port": None, "ae_title": None},
                                  storage={"data_dir": None})
    assert changed == base


def test_with_overrides_leaves_the_original_unchanged():
    base = Config()
    base.with_overrides(network={"port": 104})
    assert base.network.port == 11112


def test_with_overrides_coerces_a_data_dir_string_to_a_path():
    assert Config().with_overrides(storage={"data_dir": "/d"}).storage.data_dir == Path("/d")


def test_with_overrides_validates_the_new_values():
    with pytest.raises(ConfigError, match="ae_title"):
        Config().with_overrides(network={"ae_title": "X" * 17})


def test_with_overrides_refuses_an_unknown_option():
    with pytest.raises(ConfigError, match="colour"):
        Config().with_overrides(network={"colour": "blue"})


# --- command line ------------------------------------------------------------------------
def test_serve_flags_override_the_defaults():
    args = cli.build_parser().parse_args(
        ["serve", "--port", "104", "--ae-title", "X", "--data-dir", "/d"])
    config = cli._config_from_args(args)
    assert (config.network.port, config.network.ae_title) == (104, "X")
    assert config.storage.data_dir == Path("/d")
    assert config.network.host == NetworkConfig().host
    assert config.storage == dataclasses.replace(StorageConfig(), data_dir=Path("/d"))
    assert config.logging == LoggingConfig()


def test_serve_flags_override_the_config_file(tmp_path):
    path = write(tmp_path, '[network]\nport = 4242\nhost = "127.0.0.1"\n')
    args = cli.build_parser().parse_args(["serve", "--config", str(path), "--port", "104"])
    config = cli._config_from_args(args)
    assert (config.network.port, config.network.host) == (104, "127.0.0.1")


def test_serve_without_flags_gives_the_config_file_values(tmp_path):
    path = write(tmp_path, '[network]\nport = 4242\n')
    args = cli.build_parser().parse_args(["serve", "--config", str(path)])
    assert cli._config_from_args(args) == load_config(path)


def test_stats_takes_the_data_dir_flag():
    args = cli.build_parser().parse_args(["stats", "--data-dir", "/archive"])
    assert cli._config_from_args(args).storage.data_dir == Path("/archive")


def test_invalid_ae_title_flag_raises_config_error():
    args = cli.build_parser().parse_args(["serve", "--ae-title", "X" * 17])
    with pytest.raises(ConfigError, match="ae_title"):
        cli._config_from_args(args)


def test_main_reports_a_config_error_with_exit_status_2(tmp_path, capsys):
    assert cli.main(["stats", "--data-dir", str(tmp_path / "empty")]) == 2
    assert "no archive" in capsys.readouterr().err


# --- [tls], TLS destinations ------------------------------------------------------------
TLS_FILES = {"certificate": "/c.pem", "key": "/k.pem", "ca_file": "/ca.pem"}


@pytest.mark.parametrize("tls, message", [
    ({"port": 2762}, "needs certificate and key"),
    ({"port": 2762, "certificate": "/c.pem", "key": "/k.pem"}, "needs ca_file"),
    ({"certificate": "/c.pem"}, "go together"),
    ({**TLS_FILES, "port": 2762, "min_version": "1.1"}, "min_version"),
    ({**TLS_FILES, "port": 70000}, "port out of range"),
    ({**TLS_FILES, "port": 2762, "handshake_timeout": 0}, "handshake_timeout"),
    ({**TLS_FILES, "plain_listener": False}, "needs a TLS port"),
    ({**TLS_FILES, "port": 11112}, "also \\[network\\] port"),
    ({**TLS_FILES, "port": 2762, "check_hostname": "yes"}, "tls.check_hostname"),
])
def test_invalid_tls_section_raises_config_error(tls, message):
    with pytest.raises(ConfigError, match=message):
        config_from_mapping({"tls": tls})


def test_tls_listener_without_client_certificates_needs_no_ca():
    config = config_from_mapping({"tls": {"port": 2762, "certificate": "/c.pem",
                                          "key": "/k.pem", "require_client_certificate": False}})
    assert config.tls.port == 2762 and config.tls.plain_listener


def test_retrieve_destinations_take_host_port_or_a_table_with_tls():
    config = config_from_mapping({"tls": {"ca_file": "/ca.pem"}, "retrieve": {"destinations": {
        "VIEWER": "10.0.0.5:104",
        "WS2": {"host": "ws2.example", "port": 2762, "tls": True}}}})
    assert config.retrieve.destination("VIEWER") == RemoteAE("10.0.0.5", 104, False)
    assert config.retrieve.destination("WS2 ") == RemoteAE("ws2.example", 2762, True)
    assert config.retrieve.destination("OTHER") is None
    assert config.with_overrides(retrieve={"connect_timeout": 3}).retrieve.destinations == \
        config.retrieve.destinations
    # Built directly (as tests and tools do), "host:port" strings are parsed too.
    assert RetrieveConfig(destinations={"A": "h:1"}).destination("A") == RemoteAE("h", 1)


@pytest.mark.parametrize("value, message", [
    ('"10.0.0.5"', "host:port"),
    ('"10.0.0.5:0"', "port 1-65535"),
    ('"10.0.0.5:http"', "host:port"),
    ('{ host = "h", port = 104, tls = "yes" }', "tls"),
    ('{ host = "h", port = 104, colour = "red" }', "colour"),
    ('{ port = 104 }', "needs a host"),
    ("104", "host:port"),
])
def test_bad_retrieve_destination_raises_config_error(tmp_path, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, f"[retrieve]\ndestinations = {{ V = {value} }}\n"))


def test_tls_destinations_need_a_ca_file():
    with pytest.raises(ConfigError, match="destinations.WS2 says tls = true"):
        config_from_mapping({"retrieve": {"destinations": {
            "WS2": {"host": "h", "port": 2762, "tls": True}}}})
    with pytest.raises(ConfigError, match="routing.destinations.V. says tls = true"):
        config_from_mapping({"routing": {"destinations": {"V": {
            "type": "dicom", "ae_title": "V", "host": "h", "port": 2762, "tls": True}}}})
    config = config_from_mapping({"tls": {"ca_file": "/ca.pem"}, "routing": {"destinations": {
        "V": {"type": "dicom", "ae_title": "V", "host": "h", "port": 2762, "tls": True}}}})
    assert config.routing.destinations["V"].tls
