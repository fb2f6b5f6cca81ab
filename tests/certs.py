"""Certificates made at test time with `cryptography`: a CA, a server cert for 127.0.0.1 and
localhost, a client cert, and a CA nobody trusts (for a client cert that must be refused)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pem:
    """One certificate and its key, as PEM text and as files."""

    cert: str
    key: str
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class Certs:
    ca: Pem
    server: Pem
    client: Pem
    stranger: Pem  # a client cert from another CA

    def ssl_config(self, client_verify: bool = False, custom_ca: bool | None = None) -> str:
        """A TF Serving SSLConfig text proto for these certs."""
        with_ca = client_verify if custom_ca is None else custom_ca
        lines = [
            f"server_key: {text_proto_string(self.server.key)}",
            f"server_cert: {text_proto_string(self.server.cert)}",
        ]
        if with_ca:
            lines.append(f"custom_ca: {text_proto_string(self.ca.cert)}")
        if client_verify:
            lines.append("client_verify: true")
        return "\n".join(lines) + "\n"


def make_certs(directory: Path) -> Certs:
    """A fresh CA, server and client certs written under `directory`."""
    ca_key, ca_cert = _self_signed("pyserving test CA")
    other_key, other_cert = _self_signed("another CA")
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issued(
        "localhost",
        server_key,
        ca_key,
        ca_cert,
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _issued(
        "client", client_key, ca_key, ca_cert, ExtendedKeyUsageOID.CLIENT_AUTH, []
    )
    stranger_key = ec.generate_private_key(ec.SECP256R1())
    stranger_cert = _issued(
        "stranger", stranger_key, other_key, other_cert, ExtendedKeyUsageOID.CLIENT_AUTH, []
    )
    return Certs(
        ca=_write(directory, "ca", ca_cert, ca_key),
        server=_write(directory, "server", server_cert, server_key),
        client=_write(directory, "client", client_cert, client_key),
        stranger=_write(directory, "stranger", stranger_cert, stranger_key),
    )


def text_proto_string(pem: str) -> str:
    """`pem` as a text-proto string literal."""
    return '"' + pem.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(
        now + datetime.timedelta(days=1)
    )


def _self_signed(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return key, _validity(builder).sign(key, hashes.SHA256())


def _issued(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    usage: x509.ObjectIdentifier,
    alt_names: list[x509.GeneralName],
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return _validity(builder).sign(ca_key, hashes.SHA256())


def _write(
    directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> Pem:
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    cert_file = directory / f"{name}.crt"
    key_file = directory / f"{name}.key"
    cert_file.write_text(cert_pem)
    key_file.write_text(key_pem)
    return Pem(cert_pem, key_pem, cert_file, key_file)
