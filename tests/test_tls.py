"""TLS on every service: a cluster whose master, chunkservers and gateway serve HTTPS with a certificate
signed by a CA made here; clients verify it with --tls-ca, and one without the CA fails at once with a
certificate error."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dfs import tls
from dfs.auth import auth_headers
from dfs.client.sync import SyncClient
from dfs.launcher import TlsFiles
from tests.harness import Cluster, http_json

MiB = 1024 * 1024


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_certificates(folder: Path) -> TlsFiles:
    """A CA, and a certificate it signs for 127.0.0.1 and localhost (PEM files in `folder`)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("dfs test CA")).issuer_name(_name("dfs test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = TlsFiles(cert=folder / "server.pem", key=folder / "server.key", ca=folder / "ca.pem")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    files.key.chmod(0o600)
    return files


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("tls")
    cluster = Cluster(root=root, goal=2, tls=make_certificates(root))
    try:
        cluster.start(chunkservers=2, gateway=True)
        yield cluster
    finally:
        cluster.stop()
        tls.set_default_ca(None)


def test_every_service_is_https(secure: Cluster) -> None:
    assert secure.master_url.startswith("https://") and secure.gateway is not None
    status, body = http_json("GET", secure.master_url + "/api/status")
    assert status == 200 and len(body["servers"]) == 2
    assert all(s["url"].startswith("https://") for s in body["servers"])  # chunkservers advertise https
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP on a TLS port gets nowhere
        urllib.request.urlopen(secure.master_url.replace("https", "http") + "/health", timeout=5)


def test_put_get_through_client_and_gateway(secure: Cluster) -> None:
    data = os.urandom(2 * MiB + 77)  # three chunks, each copied to both chunkservers over TLS
    with SyncClient(secure.master_url, retry_for=10) as fs:
        with fs.open("/secret.bin", create=True) as f:
            f.write(0, data)
        with fs.open("/secret.bin") as f:
            assert hashlib.sha256(f.read(0, len(data))).digest() == hashlib.sha256(data).digest()
        assert all(len(c["servers"]) == 2 for c in fs.chunks(fs.stat("/secret.bin").inode)["chunks"])
        # a copy between chunkservers (master order, chunkserver pulls from chunkserver) over TLS too
        with fs.open("/single", create=True, goal=1) as f:
            f.write(0, data[:MiB])
        status, reply = http_json("POST", secure.master_url + "/api/admin/setrep", {"path": "/single", "goal": 2})
        assert status == 200, reply
        deadline = time.monotonic() + 30
        while len(fs.chunks(fs.stat("/single").inode)["chunks"][0]["servers"]) < 2:
            assert time.monotonic() < deadline, "no second copy over TLS"
            time.sleep(0.1)
    assert secure.gateway is not None
    context = ssl.create_default_context(cafile=str(secure.tls.ca))  # type: ignore[union-attr]
    auth = auth_headers(secure.admin_key)
    put = urllib.request.Request(secure.gateway.url + "/fs/via-gateway", data=data[:100_000], method="PUT",
                                 headers=auth)
    with urllib.request.urlopen(put, timeout=30, context=context) as resp:
        assert resp.status in (200, 201)
    get = urllib.request.Request(secure.gateway.url + "/fs/via-gateway", headers=auth)
    with urllib.request.urlopen(get, timeout=30, context=context) as resp:
        assert resp.read() == data[:100_000]
    get = urllib.request.Request(secure.gateway.url + "/fs/secret.bin", headers=auth)
    with urllib.request.urlopen(get, timeout=30, context=context) as resp:
        assert hashlib.sha256(resp.read()).digest() == hashlib.sha256(data).digest()


def test_cli_verifies_with_tls_ca_and_fails_clearly_without(secure: Cluster) -> None:
    assert secure.tls is not None
    env = {k: v for k, v in os.environ.items() if k != tls.CA_ENV}
    base = [sys.executable, "-m", "dfs", "ls", "/", "--master", secure.master_url]
    done = subprocess.run([*base, "--tls-ca", str(secure.tls.ca)], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and "secret.bin" in done.stdout, done.stderr
    done = subprocess.run(base, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "certificate verify failed" in done.stderr and "--tls-ca" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    # a client without the CA gets a certificate error, not a hang
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(secure.master_url + "/health", timeout=10, context=ssl.create_default_context())
