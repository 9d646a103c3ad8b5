"""Mutual TLS, the production form of internal trust: a caller whose certificate the internal CA
signed is let in without a token; one without a certificate never gets a call through."""

from __future__ import annotations

import pathlib
import subprocess

import grpc
import pytest

from kiln.v1 import tagger_pb2, tagger_pb2_grpc
from services.common.internal_client import internal_channel
from services.common.settings import InternalAuthSettings, ServerSettings, TlsSettings
from services.tagger.server import running_tagger_service
from services.tagger.settings import TaggerSettings


def openssl(*args: str, cwd: pathlib.Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> pathlib.Path:
    """A CA, and a server and a client certificate it signed."""
    root = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
            "-subj", "/CN=kiln internal CA", cwd=root)
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                            ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN=kiln-{name}", cwd=root)
        (root / f"{name}.ext").write_text(extension + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=root)
    return root


def test_a_certified_caller_gets_in_and_an_uncertified_one_does_not(aio, tmp_path, pki):
    server = ServerSettings(port=0, shutdown_grace=1.0, tls=TlsSettings(
        cert_file=pki / "server.pem", key_file=pki / "server.key", client_ca_file=pki / "ca.pem"))
    auth = InternalAuthSettings(mode="mtls", server_ca_file=pki / "ca.pem",
                                client_tls=TlsSettings(cert_file=pki / "client.pem", key_file=pki / "client.key"))
    settings = TaggerSettings(tagger_dir=tmp_path, server=server, json_logs=False, internal_auth=auth)
    with aio.context(running_tagger_service(settings, None)) as tagger:
        address = f"localhost:{tagger.server.port}"
        with internal_channel(address, auth) as channel:
            taggers = tagger_pb2_grpc.TaggerServiceStub(channel).ListTaggers(tagger_pb2.ListTaggersRequest())
            assert [t.name for t in taggers.taggers] == ["taggers/builtin"]
        anonymous = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes())
        with grpc.secure_channel(address, anonymous) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                tagger_pb2_grpc.TaggerServiceStub(channel).ListTaggers(tagger_pb2.ListTaggersRequest(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError):
            tagger_pb2_grpc.TaggerServiceStub(channel).ListTaggers(tagger_pb2.ListTaggersRequest(), timeout=10)
