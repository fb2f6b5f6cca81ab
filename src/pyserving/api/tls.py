"""TLS for both listeners from TF Serving's `--ssl_config_file` (an `SSLConfig` text proto).

    server_key: "-----BEGIN PRIVATE KEY-----\\n..."      # PEM text, as in TF Serving
    server_cert: "-----BEGIN CERTIFICATE-----\\n..."
    custom_ca: "-----BEGIN CERTIFICATE-----\\n..."       # optional: the CA client certs chain to
    client_verify: true                                 # mutual TLS: a client without a cert fails

`load_tls_config(path)` reads and checks the file once, at start; `TlsConfig.grpc_credentials()`
and `TlsConfig.ssl_context()` give what the gRPC and REST listeners need. As in TF Serving,
`custom_ca` without `client_verify` asks clients for a certificate and checks one that is sent,
but lets a client without one in.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
from google.protobuf import text_format

from pyserving.proto.ssl_config_pb2 import SSLConfig

__all__ = ["TlsConfig", "TlsConfigError", "load_tls_config", "parse_tls_config"]


class TlsConfigError(ValueError):
    """An SSL config that cannot be used; the message is one line naming the file and field."""


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Checked PEM texts of one SSLConfig (fields as TF Serving's)."""

    server_key: str
    server_cert: str
    custom_ca: str = ""
    client_verify: bool = False

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Server credentials for `add_secure_port` (client certs required with client_verify)."""
        return grpc.ssl_server_credentials(
            [(self.server_key.encode(), self.server_cert.encode())],
            root_certificates=self.custom_ca.encode() or None,
            require_client_auth=self.client_verify,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """A server-side context for the REST listener: TLS 1.2 or newer; with client_verify,
        a client must present a certificate that chains to custom_ca."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        with _pem_files(self.server_cert, self.server_key) as (cert_file, key_file):
            context.load_cert_chain(cert_file, key_file)
        if self.custom_ca:
            context.load_verify_locations(cadata=self.custom_ca)
            context.verify_mode = ssl.CERT_REQUIRED if self.client_verify else ssl.CERT_OPTIONAL
        return context


def load_tls_config(path: str) -> TlsConfig:
    """Read and check the SSLConfig text proto at `path`.

    Raises TlsConfigError naming the file and the field that is missing or does not parse.
    """
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise TlsConfigError(f"cannot read --ssl_config_file {path}: {reason}") from None
    try:
        return parse_tls_config(text)
    except TlsConfigError as exc:
        raise TlsConfigError(f"--ssl_config_file {path}: {exc}") from None


def parse_tls_config(text: str) -> TlsConfig:
    """Parse and check SSLConfig text; raises TlsConfigError naming the bad field."""
    message = SSLConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise TlsConfigError(f"not a valid SSLConfig text proto: {_one_line(exc)}") from None
    for field in ("server_key", "server_cert"):
        if not getattr(message, field).strip():
            raise TlsConfigError(f"{field} is empty; it must hold the PEM text")
    if message.client_verify and not message.custom_ca.strip():
        raise TlsConfigError("client_verify is true but custom_ca is empty: nothing to verify with")
    config = TlsConfig(
        server_key=message.server_key,
        server_cert=message.server_cert,
        custom_ca=message.custom_ca,
        client_verify=message.client_verify,
    )
    _check(config)
    return config


def _check(config: TlsConfig) -> None:
    """Parse every PEM text once, so a bad one stops the start naming its field."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        probe.load_verify_locations(cadata=config.server_cert)
    except (ssl.SSLError, ValueError) as exc:
        raise TlsConfigError(f"server_cert is not a PEM certificate: {_one_line(exc)}") from None
    if config.custom_ca:
        try:
            probe.load_verify_locations(cadata=config.custom_ca)
        except (ssl.SSLError, ValueError) as exc:
            raise TlsConfigError(f"custom_ca is not a PEM certificate: {_one_line(exc)}") from None
    try:
        with _pem_files(config.server_cert, config.server_key) as (cert_file, key_file):
            probe.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        raise TlsConfigError(
            f"server_key is not a PEM private key matching server_cert: {_one_line(exc)}"
        ) from None


@contextlib.contextmanager
def _pem_files(cert: str, key: str) -> Iterator[tuple[str, str]]:
    """The cert and key as files in a private (0700) temporary directory, removed on exit
    (`ssl` loads a key only from a file)."""
    with tempfile.TemporaryDirectory(prefix="pyserving-tls-") as directory:
        cert_file = os.path.join(directory, "cert.pem")
        key_file = os.path.join(directory, "key.pem")
        for name, text in ((cert_file, cert), (key_file, key)):
            descriptor = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
                stream.write(text)
        yield cert_file, key_file


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
