"""Server address and authkey resolution: options, environment, files."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from fetchq import config, defaults
from fetchq.config import (
    Address,
    Authkey,
    client_authkey,
    default_key_path,
    find_authkey,
    generate_key_file,
    is_loopback,
    parse_address,
    parse_port,
    read_key_file,
    server_address,
)
from fetchq.errors import ConfigError, NoAuthkey


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in (config.ENV_SERVER, config.ENV_AUTHKEY, config.ENV_AUTHKEY_FILE):
        monkeypatch.delenv(name, raising=False)
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    return xdg


def key_file(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    path.chmod(0o600)
    return path


# -- addresses -------------------------------------------------------------


def test_parse_address_host_and_port() -> None:
    address = parse_address("queue.example:9000")
    assert address == Address("queue.example", 9000)
    assert str(address) == "queue.example:9000"
    assert address.as_tuple() == ("queue.example", 9000)
    assert parse_address(" 10.0.0.5:1 ") == Address("10.0.0.5", 1)


def test_parse_address_host_alone_gets_the_default_port() -> None:
    assert parse_address("queue.example") == Address("queue.example", defaults.PORT)


def test_parse_address_port_alone_means_loopback() -> None:
    assert parse_address(":9000") == Address(defaults.HOST, 9000)
    assert is_loopback(parse_address(":9000").host)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("h:99999", "invalid port 99999"),
        ("h:-1", "invalid port '-1'"),
        ("h:http", "invalid port 'http'"),
        ("h:", "invalid port ''"),
        (":", "invalid port ''"),
        ("", "empty server address"),
        ("   ", "empty server address"),
    ],
)
def test_parse_address_rejects_bad_input(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_address(text)


@pytest.mark.parametrize("text", ["::1", "[::1]:7439", "[::1]", "fe80::1:7439"])
def test_parse_address_rejects_ipv6_clearly(text: str) -> None:
    with pytest.raises(ConfigError, match="IPv6 is not supported"):
        parse_address(text)


def test_parse_port_bounds() -> None:
    assert parse_port("0") == 0
    assert parse_port(65535) == 65535
    with pytest.raises(ConfigError):
        parse_port(65536)


@pytest.mark.parametrize(
    "text", ["8_0", "+80", "-0", " 80", "0x50", "\u0668\u0660", "\uff18\uff10"]
)
def test_parse_port_takes_ascii_digits_only(text: str) -> None:
    """int() reads all of these as a number; a port is written in plain digits."""
    with pytest.raises(ConfigError, match="invalid port"):
        parse_port(text)
    with pytest.raises(ConfigError, match="invalid port"):
        parse_address(f"h:{text}")


def test_server_address_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    assert server_address(None) == Address(defaults.HOST, defaults.PORT)
    monkeypatch.setenv(config.ENV_SERVER, "from-env:1111")
    assert server_address(None) == Address("from-env", 1111)
    assert server_address("from-option:2222") == Address("from-option", 2222)
    monkeypatch.setenv(config.ENV_SERVER, "")
    assert server_address(None) == Address(defaults.HOST, defaults.PORT)


def test_server_address_from_a_bad_environment_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(config.ENV_SERVER, "h:nope")
    with pytest.raises(ConfigError, match="invalid port"):
        server_address(None)
    assert server_address("h:5") == Address("h", 5)


def test_several_servers_are_taken_in_order_and_an_empty_one_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(config.ENV_SERVER, "a:1,b:2")
    monkeypatch.setenv(config.ENV_AUTHKEY, "a-key-for-the-link")
    link = config.server_link(None, authkey_file=None)
    assert (link.address, link.others) == (Address("a", 1), (Address("b", 2),))
    assert str(link) == "a:1,b:2"
    assert config.server_addresses("c:3") == (Address("c", 3),)  # the option beats it
    with pytest.raises(ConfigError, match="empty server address"):
        config.server_addresses("a:1,")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.9.1", True), ("localhost", True), ("::1", True),
     ("0.0.0.0", False), ("10.1.2.3", False), ("example.com", False)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# -- authkeys --------------------------------------------------------------


def test_default_key_path_follows_xdg(clean_environment: Path) -> None:
    assert default_key_path() == clean_environment / "fetchq" / "authkey"


def test_find_authkey_precedence(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clean_environment: Path
) -> None:
    assert find_authkey(None) is None

    default = default_key_path()
    default.parent.mkdir(parents=True)
    key_file(default, b"from-default\n")
    found = find_authkey(None)
    assert found is not None
    assert (found.key, found.source) == (b"from-default", f"file {default}")

    env_file = key_file(tmp_path / "env-key", b"from-env-file\n")
    monkeypatch.setenv(config.ENV_AUTHKEY_FILE, str(env_file))
    found = find_authkey(None)
    assert found is not None
    assert found.key == b"from-env-file"
    assert config.ENV_AUTHKEY_FILE in found.source

    monkeypatch.setenv(config.ENV_AUTHKEY, "from-env-välue")
    found = find_authkey(None)
    assert found is not None
    assert found.key == "from-env-välue".encode()
    assert found.source == f"${config.ENV_AUTHKEY}"

    option = key_file(tmp_path / "option-key", b"from-option")
    found = find_authkey(str(option))
    assert found is not None
    assert (found.key, found.source) == (b"from-option", f"file {option} (--authkey-file)")


def test_a_named_key_file_that_is_missing_is_an_error_not_a_fallback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(config.ENV_AUTHKEY, "from-env")
    missing = tmp_path / "missing"
    with pytest.raises(ConfigError, match=f"cannot read authkey file {missing}: no such file"):
        find_authkey(str(missing))
    monkeypatch.delenv(config.ENV_AUTHKEY)
    monkeypatch.setenv(config.ENV_AUTHKEY_FILE, str(missing))
    with pytest.raises(ConfigError, match=str(missing)):
        find_authkey(None)


@pytest.mark.parametrize(
    ("content", "key"),
    [
        (b"secret\n", b"secret"),
        (b"secret\r\n", b"secret"),
        (b"secret", b"secret"),
        (b"secret\n\n", b"secret\n"),
        (b" spaced key ", b" spaced key "),
    ],
)
def test_read_key_file_strips_one_trailing_newline(
    tmp_path: Path, content: bytes, key: bytes
) -> None:
    assert read_key_file(key_file(tmp_path / "key", content)) == key


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\n"])
def test_empty_key_file_is_an_error_naming_the_path(tmp_path: Path, content: bytes) -> None:
    path = key_file(tmp_path / "key", content)
    with pytest.raises(ConfigError, match=f"{path} is empty"):
        read_key_file(path)


def test_unreadable_key_paths_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"authkey file {tmp_path / 'nope'}: no such file"):
        read_key_file(tmp_path / "nope")
    with pytest.raises(ConfigError, match=f"authkey file {tmp_path}: it is a directory"):
        read_key_file(tmp_path)


def test_key_file_readable_by_others_warns_without_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"topsecret\n")
    path.chmod(0o644)
    assert read_key_file(path) == b"topsecret"
    err = capsys.readouterr().err
    assert "readable by other users" in err
    assert "topsecret" not in err
    path.chmod(0o600)
    read_key_file(path)
    assert capsys.readouterr().err == ""


def test_client_authkey_without_any_key_raises_no_authkey(clean_environment: Path) -> None:
    with pytest.raises(NoAuthkey, match=config.ENV_AUTHKEY) as raised:
        client_authkey(None)
    assert str(default_key_path()) in str(raised.value)


def test_client_authkey_returns_what_it_finds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(config.ENV_AUTHKEY, "k")
    assert client_authkey(None).key == b"k"


def test_generate_key_file_is_private_and_found_afterwards(clean_environment: Path) -> None:
    path = default_key_path()
    made = generate_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    assert len(made.key) >= 32
    assert path.read_bytes() == made.key + b"\n"
    assert "generated" in made.source
    found = find_authkey(None)
    assert found is not None
    assert found.key == made.key


def test_generate_key_file_never_overwrites(tmp_path: Path) -> None:
    path = key_file(tmp_path / "key", b"existing\n")
    again = generate_key_file(path)
    assert again.key == b"existing"
    assert path.read_bytes() == b"existing\n"
    assert "generated" not in again.source


def test_generated_keys_differ(tmp_path: Path) -> None:
    assert generate_key_file(tmp_path / "a").key != generate_key_file(tmp_path / "b").key


def test_generate_key_file_into_an_unwritable_place_is_a_config_error() -> None:
    """sysfs takes no new files from anyone, root included (CI runs as root):
    the folder exists, creating the key in it fails with EACCES."""
    place = Path("/sys/fetchq-test-authkey")
    with pytest.raises(
        ConfigError, match=f"cannot write a new authkey to {place}: Permission denied"
    ):
        generate_key_file(place)
    assert not place.exists()


def test_authkey_repr_never_shows_the_key(tmp_path: Path) -> None:
    made = generate_key_file(tmp_path / "key")
    secret = made.key.decode()
    for text in (repr(made), str(made), f"{made}", repr([made]), repr({"k": made})):
        assert secret not in text
        assert "source=" in text
    plain = Authkey(b"hunter2", "$FETCHQ_AUTHKEY")
    assert "hunter2" not in repr(plain)


def test_generate_key_file_whose_folder_cannot_be_made_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the key's folder should be")
    with pytest.raises(ConfigError, match=f"cannot create {blocker}"):
        generate_key_file(blocker / "fetchq" / "authkey")


def test_server_link_takes_each_setting_from_its_option_else_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import trustme

    from fetchq.config import server_link
    from fetchq.wire.tls import ENV_TLS_CA, ClientTLS

    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    monkeypatch.setenv(config.ENV_SERVER, "from-env:1111")
    monkeypatch.setenv(config.ENV_AUTHKEY, "from-env")
    monkeypatch.setenv(ENV_TLS_CA, str(ca))
    link = server_link()
    assert (link.address, link.authkey.key, link.authkey.source) == (
        Address("from-env", 1111),
        b"from-env",
        "$FETCHQ_AUTHKEY",
    )
    assert (link.tls, link.call_timeout) == (ClientTLS(str(ca)), defaults.CALL_TIMEOUT)
    option = key_file(tmp_path / "option-key", b"from-option")
    link = server_link("from-option:2222", str(option), call_timeout=3.0)
    assert (link.address, link.authkey.key) == (Address("from-option", 2222), b"from-option")
    assert link.authkey.source == f"file {option} (--authkey-file)"
    assert (link.tls, link.call_timeout) == (ClientTLS(str(ca)), 3.0)
    assert "from-env" not in repr(link) and "from-option" not in repr(link.authkey)
