"""`--ssl_config_file`: TF Serving's SSLConfig text proto, checked once, one-line errors naming
the field (the real TLS listeners are tested end to end in tests/e2e/test_trust.py)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

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
