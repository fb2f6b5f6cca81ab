"""`--ssl_config_file`: TF Serving's SSLConfig text proto, checked once, one-line errors naming
the field (the real TLS listeners are tested end to end in tests/e2e/test_trust.py)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest

from pyserving.api.rest.http_server import HttpOptions, HttpServer
from pyserving.api.tls import TlsConfigError, load_tls_config, parse_tls_config
from tests.certs import Certs, make_certs, text_proto_string


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def test_ssl_config_with_client_verify_requires_client_certs_over_tls12_issue_15(
    certs: Certs,
) -> None:
    config = parse_tls_config(certs.ssl_config(client_verify=True))
    assert config.client_verify and config.custom_ca == certs.ca.cert
    context = config.ssl_context()
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert config.grpc_credentials() is not None


def test_custom_ca_without_client_verify_asks_for_a_cert_but_does_not_require_one_issue_15(
    certs: Certs,
) -> None:
    context = parse_tls_config(certs.ssl_config(custom_ca=True)).ssl_context()
    assert context.verify_mode == ssl.CERT_OPTIONAL
    plain = parse_tls_config(certs.ssl_config()).ssl_context()
    assert plain.verify_mode == ssl.CERT_NONE


def _config(certs: Certs, **fields: str | bool) -> str:
    values: dict[str, str | bool] = {
        "server_key": certs.server.key,
        "server_cert": certs.server.cert,
    }
    values.update(fields)
    return "\n".join(
        f"{k}: {'true' if v is True else 'false' if v is False else text_proto_string(v)}"
        for k, v in values.items()
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"server_key": ""}, r"^server_key is empty"),
        ({"server_cert": ""}, r"^server_cert is empty"),
        (
            {"server_cert": "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"},
            r"^server_cert is not a PEM certificate",
        ),
        ({"custom_ca": "garbage"}, r"^custom_ca is not a PEM certificate"),
        ({"client_verify": True}, r"^client_verify is true but custom_ca is empty"),
        ({"server_key": "not a key"}, r"^server_key is not a PEM private key matching"),
    ],
)
def test_bad_ssl_config_names_the_field_issue_15(
    certs: Certs, fields: dict[str, str | bool], message: str
) -> None:
    with pytest.raises(TlsConfigError, match=message) as caught:
        parse_tls_config(_config(certs, **fields))
    assert "\n" not in str(caught.value)


def test_a_key_that_does_not_match_the_cert_is_refused_issue_15(certs: Certs) -> None:
    with pytest.raises(TlsConfigError, match=r"^server_key is not a PEM private key matching"):
        parse_tls_config(_config(certs, server_key=certs.client.key))


def test_unreadable_or_malformed_ssl_config_file_is_one_line_naming_the_file_issue_15(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "missing.conf"
    with pytest.raises(TlsConfigError, match=rf"cannot read --ssl_config_file {missing}"):
        load_tls_config(str(missing))
    bad = tmp_path / "bad.conf"
    bad.write_text("server_key: 1 2 3 {")
    with pytest.raises(TlsConfigError, match=r"bad.conf: not a valid SSLConfig text proto") as e:
        load_tls_config(str(bad))
    assert "\n" not in str(e.value)


async def _closed_without_a_byte(port: int, within_s: float) -> bytes | None:
    """Open a TCP connection, send nothing; what the server wrote before closing it, or None
    when it is still open after `within_s`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await asyncio.wait_for(reader.read(), within_s)
    except TimeoutError:
        return None
    finally:
        writer.close()


async def _noop_app(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@pytest.mark.asyncio
async def test_tls_handshake_is_bounded_and_a_full_tls_port_writes_no_plain_text_issue_15(
    certs: Certs,
) -> None:
    options = HttpOptions(header_timeout_s=0.5, max_connections=2)
    server = HttpServer(_noop_app, options)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await server.start(sock, ssl=parse_tls_config(certs.ssl_config()).ssl_context())
    port = sock.getsockname()[1]
    try:
        # two silent clients fill the port; a third is closed at once, with no plain-text 503
        # a TLS client would read as a broken handshake
        silent = [asyncio.ensure_future(_closed_without_a_byte(port, 20.0)) for _ in range(2)]
        await asyncio.sleep(0)
        while len(server._opening) + len(server.connections) < 2:
            await asyncio.sleep(0.01)
        assert await _closed_without_a_byte(port, 20.0) == b""
        # the silent ones are dropped after the header timeout, not asyncio's default 60 s
        assert await asyncio.gather(*silent) == [b"", b""]
    finally:
        await server.shutdown(1.0)
        sock.close()
