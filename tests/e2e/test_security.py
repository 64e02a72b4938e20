"""Security end to end (docs/security.md): TLS 1.3 only, ALPN, mutual TLS with client
certificates verified against a CA and bound to the client id, token authentication,
sessions that cannot be claimed without authenticating, per-method authorization.

Everything runs over real QUIC on loopback with certificates made by `quicflow.certs`.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aioquic import tls
from aioquic.asyncio.client import connect as aioquic_connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID
from echo.echo_pb2 import EchoRequest
from echo.echo_quicflow import EchoStub

from quicflow import (
    CertificateAuthenticator,
    Client,
    ClientConfig,
    ConfigError,
    ConnectionClosed,
    HelloInfo,
    MethodAuthorizer,
    PeerInfo,
    RpcError,
    Server,
    ServerConfig,
    StatusCode,
    TokenAuthenticator,
)
from quicflow.certs import (
    DevCerts,
    issue_client_certificate,
    revoke_client_certificates,
    write_dev_certs,
)
from quicflow.protocol import CallProtocol, Role, TrailersReceived
from quicflow.protocol.control import ControlProtocol, WelcomeReceived
from quicflow.transport import QuicFlowProtocol, connect
from quicflow.transport.tls import client_configuration
from quicflow.wire import ErrorCode

from .service import TestEcho

CRYPTO_ERROR = 0x100  # QUIC transport error for a TLS alert: 0x100 + alert (RFC 9001 §4.8)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    """One CA, a server certificate, client certificates for alice, bob and an expired one."""
    directory = tmp_path_factory.mktemp("pki")
    certs = write_dev_certs(directory, client_id="alice")
    issue_client_certificate(directory, "bob")
    issue_client_certificate(
        directory,
        "old",
        not_before=datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=10),
        days=1,
    )
    return certs


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> DevCerts:
    """A second, unrelated CA with its own client certificate for "alice"."""
    return write_dev_certs(tmp_path_factory.mktemp("other"), client_id="alice")


@asynccontextmanager
async def _server(pki: DevCerts, **options: Any) -> AsyncIterator[Server]:
    if options.get("client_cert_mode", "none") != "none":
        # A qh3 server cannot ask for client certificates (engine_qh3): on the qh3 run
        # (conftest.py) these tests check qh3 clients against an aioquic server.
        options.setdefault("quic_engine", "aioquic")
    service = TestEcho()
    server = Server(
        ServerConfig(
            host="127.0.0.1",
            port=0,
            cert_file=str(pki.cert_file),
            key_file=str(pki.key_file),
            **options,
        )
    )
    server.add_service(service)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _client(server: Server, pki: DevCerts, name: str | None = None, **options: Any) -> Client:
    """A client of ``server``; ``name``: present ``client-<name>.pem`` (or "alice": client.pem)."""
    directory = pki.ca_file.parent
    if name == "alice":
        options.update(cert_file=str(pki.client_cert_file), key_file=str(pki.client_key_file))
    elif name is not None:
        options.update(
            cert_file=str(directory / f"client-{name}.pem"),
            key_file=str(directory / f"client-{name}.key"),
        )
    return Client(
        ClientConfig(
            host="127.0.0.1",
            port=server.port,
            ca_file=str(pki.ca_file),
            server_name="localhost",
            **options,
        )
    )


def _mtls(**options: Any) -> Callable[[DevCerts], dict[str, Any]]:
    def build(pki: DevCerts) -> dict[str, Any]:
        return {
            "client_ca_file": str(pki.ca_file),
            "client_cert_mode": "required",
            "quic_engine": "aioquic",  # see _server
            **options,
        }

    return build


# -- mutual TLS --


async def test_client_certificate_connects_and_names_the_client_id(pki: DevCerts) -> None:
    """Check that a client certificate from the configured CA connects, that the
    authenticator sees the verified certificate and the id it names, and that
    CertificateAuthenticator gives the session that id."""
    seen: list[PeerInfo] = []
    certificate_auth = CertificateAuthenticator()

    async def recording(hello: HelloInfo, peer: PeerInfo) -> str:
        seen.append(peer)
        return await certificate_auth(hello, peer)

    async with _server(pki, **_mtls(authenticator=recording)(pki)) as server:
        async with _client(server, pki, "alice") as client:
            assert client.client_id == "alice"
            assert (await EchoStub(client).say(EchoRequest(text="hi"))).text == "hi"
            assert [c.client_id for c in server.list_clients()] == ["alice"]
        async with _client(server, pki, "bob", client_id="bob") as client:
            assert client.client_id == "bob"
    presented = x509.load_pem_x509_certificate(pki.client_cert_file.read_bytes())
    assert seen[0].certificate is not None
    assert x509.load_der_x509_certificate(seen[0].certificate) == presented
    assert [p.certificate_client_id for p in seen] == ["alice", "bob"]


@pytest.mark.parametrize(
    ("who", "alert", "reason"),
    [
        (None, tls.AlertDescription.certificate_required, "client certificate required"),
        ("other-ca", tls.AlertDescription.bad_certificate, "client certificate not trusted"),
        ("old", tls.AlertDescription.certificate_expired, "client certificate expired at"),
        ("server-cert", tls.AlertDescription.bad_certificate, "EKU"),
    ],
)
async def test_bad_client_certificates_fail_the_handshake(
    pki: DevCerts, other_pki: DevCerts, who: str | None, alert: int, reason: str
) -> None:
    """Check that no certificate (when required), one from another CA, an expired one, and a
    certificate without clientAuth usage are refused by the server with the TLS alert and a
    reason that says why, and that no session or connection is left behind."""
    connects: list[str] = []
    async with _server(pki, **_mtls()(pki)) as server:
        server.hooks.on_connect(lambda info: connects.append(info.client_id))
        cert: Path | None
        key: Path | None
        if who == "other-ca":
            cert, key = other_pki.client_cert_file, other_pki.client_key_file
        elif who == "server-cert":
            cert, key = pki.cert_file, pki.key_file  # valid chain, but serverAuth only
        elif who == "old":
            cert, key = (
                pki.ca_file.parent / "client-old.pem",
                pki.ca_file.parent / "client-old.key",
            )
        else:
            cert = key = None
        quic = client_configuration(
            server_name="localhost",
            ca_file=str(pki.ca_file),
            cert_file=None if cert is None else str(cert),
            key_file=None if key is None else str(key),
        )
        settings = ClientConfig().transport_settings()
        conn: QuicFlowProtocol | None = None
        try:
            # TLS 1.3: the client finishes its side before the server reads its certificate,
            # so the refusal arrives either during connect or right after.
            conn = await connect("127.0.0.1", server.port, quic, settings, connect_timeout=5)
            await asyncio.wait_for(conn.wait_closed(), 5)
            code, text = conn.close_code, conn.close_reason
        except ConnectionClosed as exc:
            code, text = None, exc.message
        finally:
            if conn is not None:
                await conn.aclose()
        assert reason in text, text
        assert code in (None, CRYPTO_ERROR + alert)
        # The same through the Client: a clear ConnectionClosed, the client CLOSED.
        name = {None: None, "old": "old"}.get(who, "bob")
        if who in (None, "old"):
            with pytest.raises(ConnectionClosed) as info:
                await _client(server, pki, name).connect()
            assert reason in info.value.message
        assert server.list_clients() == []
        assert connects == []
        for _ in range(50):
            if not server.connections:
                break
            await asyncio.sleep(0.02)
        assert server.connections == []


async def test_optional_mode_accepts_no_certificate_but_checks_one_sent(
    pki: DevCerts, other_pki: DevCerts
) -> None:
    """Check that with client_cert_mode="optional" a client without a certificate connects
    (the authenticator sees no certificate), while a certificate that does not verify is
    still refused."""
    seen: list[PeerInfo] = []

    def auth(hello: HelloInfo, peer: PeerInfo) -> str:
        seen.append(peer)
        return peer.certificate_client_id or hello.client_id or "anonymous"

    options = {"client_ca_file": str(pki.ca_file), "client_cert_mode": "optional"}
    async with _server(pki, authenticator=auth, **options) as server:
        async with _client(server, pki) as client:
            assert client.client_id == "anonymous"
        async with _client(server, pki, "bob") as client:
            assert client.client_id == "bob"
        stranger = _client(
            server,
            pki,
            cert_file=str(other_pki.client_cert_file),
            key_file=str(other_pki.client_key_file),
        )
        with pytest.raises(ConnectionClosed) as info:
            await stranger.connect()
        assert "not trusted" in info.value.message
    assert [(p.certificate is None, p.certificate_client_id) for p in seen] == [
        (True, None),
        (False, "bob"),
    ]


async def test_certificate_for_one_id_cannot_claim_another(pki: DevCerts) -> None:
    """Check that bob's certificate cannot claim "alice": PERMISSION_DENIED, and the real
    alice keeps her session and can still call."""
    disconnects: list[str] = []
    async with _server(pki, **_mtls(authenticator=CertificateAuthenticator())(pki)) as server:
        server.hooks.on_disconnect(lambda info, reason: disconnects.append(info.client_id))
        async with _client(server, pki, "alice") as alice:
            [before] = server.list_clients()
            thief = _client(server, pki, "bob", client_id="alice")
            with pytest.raises(RpcError) as info:
                await thief.connect()
            assert info.value.code is StatusCode.PERMISSION_DENIED
            assert "'bob'" in info.value.message and "'alice'" in info.value.message
            [after] = server.list_clients()
            assert after.client_id == "alice"
            assert after.remote_address == before.remote_address  # not displaced
            assert (await EchoStub(alice).say(EchoRequest(text="still"))).text == "still"
            assert disconnects == []


async def test_certificate_and_token_must_both_fit(pki: DevCerts) -> None:
    """Check that CertificateAuthenticator(also=TokenAuthenticator) needs a valid token for
    the certificate's own id: a token bound to another id is PERMISSION_DENIED, none is
    UNAUTHENTICATED."""
    tokens = TokenAuthenticator({"alice-token": "alice", "bob-token": "bob"})
    auth = CertificateAuthenticator(also=tokens)
    async with _server(pki, **_mtls(authenticator=auth)(pki)) as server:
        async with _client(server, pki, "alice", token="alice-token") as client:
            assert client.client_id == "alice"
        with pytest.raises(RpcError) as info:
            await _client(server, pki, "alice", token="bob-token").connect()
        assert info.value.code is StatusCode.PERMISSION_DENIED
        with pytest.raises(RpcError) as info:
            await _client(server, pki, "alice").connect()
        assert info.value.code is StatusCode.UNAUTHENTICATED
        assert server.list_clients() == []


async def test_certificate_authenticator_without_mutual_tls_refuses(pki: DevCerts) -> None:
    """Check that CertificateAuthenticator on a server that asks for no client certificate
    refuses everyone with UNAUTHENTICATED instead of trusting the claimed id."""
    async with _server(pki, authenticator=CertificateAuthenticator()) as server:
        with pytest.raises(RpcError) as info:
            await _client(server, pki, "alice", client_id="alice").connect()
        assert info.value.code is StatusCode.UNAUTHENTICATED
        assert "certificate is required" in info.value.message


async def test_unreadable_client_ca_file_fails_start_naming_the_field(
    pki: DevCerts, tmp_path: Path
) -> None:
    """Check that a client CA file that is missing or holds no certificate fails
    Server.start with ConfigError naming client_ca_file, and a missing client certificate
    fails Client.connect naming cert_file."""
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    for path in (tmp_path / "missing.pem", garbage):
        with pytest.raises(ConfigError) as info:
            async with _server(pki, client_ca_file=str(path), client_cert_mode="required"):
                pass
        assert info.value.field == "client_ca_file"
    async with _server(pki) as server:
        client = _client(server, pki, cert_file=str(tmp_path / "nope.pem"))
        with pytest.raises(ConfigError) as cinfo:
            await client.connect()
        assert cinfo.value.field == "cert_file"


# -- TLS version and ALPN --


class _Watcher(QuicConnectionProtocol):
    """An aioquic client protocol that remembers how its connection ended."""

    terminated: events.ConnectionTerminated | None = None

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.ConnectionTerminated):
            type(self).terminated = event
        super().quic_event_received(event)


async def _aioquic_attempt(
    server: Server, config: QuicConfiguration
) -> events.ConnectionTerminated:
    _Watcher.terminated = None
    with pytest.raises(ConnectionError):
        async with asyncio.timeout(5):
            async with aioquic_connect(
                "127.0.0.1", server.port, configuration=config, create_protocol=_Watcher
            ):
                pass
    assert _Watcher.terminated is not None
    return _Watcher.terminated


async def test_a_tls_1_2_client_cannot_connect(
    pki: DevCerts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Check that a client offering only TLS 1.2 is refused with the protocol_version alert:
    QUIC (and the server) speak TLS 1.3 only."""
    original = QuicConnection._initialize

    def tls12_client(self: QuicConnection, peer_cid: bytes) -> None:
        original(self, peer_cid)
        if self._is_client:
            self.tls._supported_versions = [tls.TLS_VERSION_1_2]

    async with _server(pki) as server:
        monkeypatch.setattr(QuicConnection, "_initialize", tls12_client)
        config = QuicConfiguration(
            is_client=True, alpn_protocols=["quicflow/1"], server_name="localhost"
        )
        config.load_verify_locations(cafile=str(pki.ca_file))
        ended = await _aioquic_attempt(server, config)
        monkeypatch.undo()
        assert ended.error_code == CRYPTO_ERROR + tls.AlertDescription.protocol_version
        assert server.list_clients() == []
        # and the normal client still gets in
        async with _client(server, pki) as client:
            assert client.connected


async def test_alpn_mismatch_is_refused_with_no_application_protocol(pki: DevCerts) -> None:
    """Check that a client offering another ALPN ("h3") is refused with the
    no_application_protocol alert and a reason naming ALPN, and gets no session."""
    connects: list[str] = []
    async with _server(pki) as server:
        server.hooks.on_connect(lambda info: connects.append(info.client_id))
        config = QuicConfiguration(is_client=True, alpn_protocols=["h3"], server_name="localhost")
        config.load_verify_locations(cafile=str(pki.ca_file))
        ended = await _aioquic_attempt(server, config)
        assert ended.error_code == CRYPTO_ERROR + tls.AlertDescription.no_application_protocol
        assert "ALPN" in ended.reason_phrase
        assert connects == [] and server.list_clients() == []


# -- token authentication and session claims --


class _Control:
    def __init__(self) -> None:
        self.protocol = ControlProtocol(Role.CALLER, max_frame_size=65536)
        self.welcomed = asyncio.Event()
        self.unread_bytes = 0

    def data_received(self, data: bytes, end_stream: bool) -> None:
        for event in self.protocol.receive_data(data, end_stream):
            if isinstance(event, WelcomeReceived):
                self.welcomed.set()

    def stream_reset(self, error_code: int) -> None:
        pass

    def stop_sending(self, error_code: int) -> None:
        pass

    def connection_lost(self, exc: ConnectionClosed) -> None:
        pass


class _Call:
    def __init__(self) -> None:
        self.machine = CallProtocol(Role.CALLER, max_message_size=1 << 20, max_metadata_size=65536)
        self.trailers: TrailersReceived | None = None
        self.lost: ConnectionClosed | None = None
        self.done = asyncio.Event()
        self.unread_bytes = 0

    def data_received(self, data: bytes, end_stream: bool) -> None:
        for event in self.machine.receive_data(data, end_stream):
            if isinstance(event, TrailersReceived):
                self.trailers = event
        if end_stream:
            self.done.set()

    def stream_reset(self, error_code: int) -> None:
        self.done.set()

    def stop_sending(self, error_code: int) -> None:
        pass

    def connection_lost(self, exc: ConnectionClosed) -> None:
        self.lost = exc
        self.done.set()


async def test_wrong_token_can_neither_call_nor_claim_a_client_id(pki: DevCerts) -> None:
    """Check that a raw peer with a wrong token that claims a connected client's id and
    calls at once is refused: the call does not run (UNAUTHENTICATED or connection closed),
    the connection closes UNAUTHENTICATED, and the real client keeps its session."""
    service_calls: list[str] = []
    disconnects: list[str] = []
    auth = TokenAuthenticator({"good": "sensor-1"})
    async with _server(pki, authenticator=auth) as server:
        server.hooks.on_disconnect(lambda info, reason: disconnects.append(info.client_id))
        async with _client(server, pki, token="good") as victim:
            [before] = server.list_clients()
            quic = client_configuration(server_name="localhost", ca_file=str(pki.ca_file))
            conn = await connect(
                "127.0.0.1",
                server.port,
                quic,
                ClientConfig().transport_settings(),
                connect_timeout=5,
            )
            try:
                control = _Control()
                control_sid = conn.open_stream(control)
                call = _Call()
                call_sid = conn.open_stream(call)
                caller = CallProtocol(
                    Role.CALLER, max_message_size=1 << 20, max_metadata_size=65536
                )
                # HELLO and a call in the same flight: the call is seen before any session.
                conn.write(
                    control_sid,
                    control.protocol.send_hello("sensor-1", [("authorization", "Bearer forged")]),
                )
                conn.write(
                    call_sid,
                    caller.send_headers("/echo.Echo/Say")
                    + caller.send_message(EchoRequest(text="pwn").SerializeToString()),
                    end_stream=True,
                )
                await asyncio.wait_for(conn.wait_closed(), 5)
                await asyncio.wait_for(call.done.wait(), 5)
            finally:
                await conn.aclose()
            assert conn.close_code == ErrorCode.UNAUTHENTICATED
            assert not control.welcomed.is_set()
            if call.trailers is not None:
                assert call.trailers.status == StatusCode.UNAUTHENTICATED
            else:
                assert call.lost is not None
            [after] = server.list_clients()
            assert (after.client_id, after.remote_address) == ("sensor-1", before.remote_address)
            assert after.calls_in == 0
            reply = await EchoStub(victim).say(EchoRequest(text="mine"))
            assert reply.text == "mine"
            service_calls.append(reply.text)
    assert service_calls == ["mine"]
    assert disconnects == ["sensor-1"]  # only the victim's own clean close at the end


# -- per-method authorization --


async def test_method_authorizer_refuses_with_permission_denied(pki: DevCerts) -> None:
    """Check that MethodAuthorizer lets bob (role admin) call Say, refuses alice with
    PERMISSION_DENIED before the handler runs, and lets both stream."""
    authorizer = MethodAuthorizer(
        {"/echo.Echo/Say": ["role:admin"], "/echo.Echo/*": ["*"]},
        roles={"bob": ["admin"]},
    )
    options = _mtls(authenticator=CertificateAuthenticator(), interceptors=[authorizer])(pki)
    service = TestEcho()
    server = Server(
        ServerConfig(
            host="127.0.0.1",
            port=0,
            cert_file=str(pki.cert_file),
            key_file=str(pki.key_file),
            **options,
        )
    )
    server.add_service(service)
    await server.start()
    try:
        async with _client(server, pki, "alice") as alice, _client(server, pki, "bob") as bob:
            with pytest.raises(RpcError) as info:
                await EchoStub(alice).say(EchoRequest(text="no"))
            assert info.value.code is StatusCode.PERMISSION_DENIED
            assert "alice" in info.value.message and "/echo.Echo/Say" in info.value.message
            assert not service.probe.started.is_set()  # the handler never ran
            assert (await EchoStub(bob).say(EchoRequest(text="yes"))).text == "yes"
            replies = [r.index async for r in EchoStub(alice).stream(EchoRequest(repeat=2))]
            assert replies == [0, 1]
    finally:
        await server.stop()


async def test_reconnect_keeps_trying_while_the_client_certificate_is_missing(
    pki: DevCerts, tmp_path: Path
) -> None:
    """Check that a client whose certificate file vanishes keeps retrying after losing its
    connection (the reconnect loop does not die on the ConfigError), and is back once the
    file returns."""
    cert, key = tmp_path / "c.pem", tmp_path / "c.key"
    cert.write_bytes(pki.client_cert_file.read_bytes())
    key.write_bytes(pki.client_key_file.read_bytes())
    async with _server(pki, **_mtls(authenticator=CertificateAuthenticator())(pki)) as server:
        client = _client(
            server,
            pki,
            cert_file=str(cert),
            key_file=str(key),
            backoff_initial=0.02,
            backoff_max=0.05,
        )
        await client.connect()
        attempts: list[int] = []
        tried_thrice = asyncio.Event()

        def on_reconnect(attempt: int, delay: float) -> None:
            attempts.append(attempt)
            if len(attempts) >= 3:
                tried_thrice.set()

        client.hooks.on_reconnect(on_reconnect)
        try:
            cert.rename(tmp_path / "gone.pem")
            [conn] = server.connections
            conn.close(ErrorCode.INTERNAL_ERROR, "dropped by the test")
            await asyncio.wait_for(tried_thrice.wait(), 5)
            assert not client.connected
            (tmp_path / "gone.pem").rename(cert)
            async with asyncio.timeout(5):
                await client.wait_ready()
            assert client.client_id == "alice"
            assert [c.client_id for c in server.list_clients()] == ["alice"]
        finally:
            await client.close()


def _ca(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    path_length: int,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), True)
        .add_extension(usage, True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass
class _ChainPKI:
    root: x509.Certificate
    root_key: ec.EllipticCurvePrivateKey
    mid: x509.Certificate
    leaf_file: Path
    key_file: Path
    chain_file: Path
    """The leaf followed by the intermediate, as a client sends them."""


def _intermediate_pki(tmp_path: Path, client_id: str) -> _ChainPKI:
    """A root CA (root.pem), an intermediate that issues client certificates (ca.pem/ca.key)
    and a client certificate for ``client_id`` with its chain file (leaf + intermediate)."""
    root_key, mid_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    root = _ca("Test root", root_key, None, 1)
    mid = _ca("Test intermediate", mid_key, (root.subject, root_key), 0)
    (tmp_path / "root.pem").write_bytes(root.public_bytes(Encoding.PEM))
    (tmp_path / "ca.pem").write_bytes(mid.public_bytes(Encoding.PEM))
    (tmp_path / "ca.key").write_bytes(
        mid_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    )
    leaf_file, key_file = issue_client_certificate(tmp_path, client_id)
    chain_file = tmp_path / "chain.pem"
    chain_file.write_bytes(leaf_file.read_bytes() + mid.public_bytes(Encoding.PEM))
    return _ChainPKI(root, root_key, mid, leaf_file, key_file, chain_file)


async def test_client_chain_through_an_intermediate_ca(pki: DevCerts, tmp_path: Path) -> None:
    """Check that a client certificate signed by an intermediate CA verifies against the
    root alone when the client sends the intermediate with it, and is refused without it."""
    chain = _intermediate_pki(tmp_path, "edge-7")
    leaf_file, key_file, chain_file = chain.leaf_file, chain.key_file, chain.chain_file
    options = {
        "client_ca_file": str(tmp_path / "root.pem"),
        "client_cert_mode": "required",
        "authenticator": CertificateAuthenticator(),
    }
    async with _server(pki, **options) as server:
        async with _client(
            server, pki, cert_file=str(chain_file), key_file=str(key_file)
        ) as client:
            assert client.client_id == "edge-7"
        leaf_only = _client(server, pki, cert_file=str(leaf_file), key_file=str(key_file))
        with pytest.raises(ConnectionClosed) as info:
            await leaf_only.connect()
        assert "not trusted" in info.value.message


async def test_revoked_client_is_refused_and_others_are_not(tmp_path: Path) -> None:
    """Check revocation over real QUIC/TLS: with client_crl_file a client the CRL lists
    (made by `quicflow certs --revoke`'s function) fails the handshake saying it is revoked,
    another client of the same CA calls normally, and a CRL rewritten while the server runs
    refuses the next handshake of the newly revoked client without a restart."""
    pki = write_dev_certs(tmp_path, client_id="alice")
    issue_client_certificate(tmp_path, "bob")
    crl_file, _ = revoke_client_certificates(tmp_path, ("bob",))
    options = _mtls(client_crl_file=str(crl_file), authenticator=CertificateAuthenticator())
    async with _server(pki, **options(pki)) as server:
        with pytest.raises(ConnectionClosed, match=r"client certificate revoked at .*serial"):
            await _client(server, pki, "bob").connect()
        alice = _client(server, pki, "alice")
        await alice.connect()
        try:
            reply = await EchoStub(alice).say(EchoRequest(text="hi"))
            assert reply.text == "hi"
            assert [c.client_id for c in server.list_clients()] == ["alice"]
            revoke_client_certificates(tmp_path, ("alice",))
            with pytest.raises(ConnectionClosed, match="client certificate revoked"):
                await _client(server, pki, "alice").connect()
            # Certificates are checked at the handshake: the open connection keeps working.
            assert (await EchoStub(alice).say(EchoRequest(text="still"))).text == "still"
        finally:
            await alice.close()


def _root_crl(issuer: x509.Certificate, key: ec.EllipticCurvePrivateKey, *revoked: int) -> bytes:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(now - datetime.timedelta(minutes=5))
        .next_update(now + datetime.timedelta(days=1))
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(Encoding.PEM)


async def test_chain_crl_check_refuses_a_revoked_intermediate(
    pki: DevCerts, tmp_path: Path
) -> None:
    """Check client_crl_check="chain" over real QUIC/TLS: a client whose chain runs through an
    intermediate CA (sent in its handshake, only the root trusted) connects while the root's
    CRL does not list the intermediate, and once the CRL file is replaced by one that does,
    its next handshake fails naming the revoked intermediate."""
    chain = _intermediate_pki(tmp_path, "edge-9")
    root, root_key, mid = chain.root, chain.root_key, chain.mid
    key_file, chain_file = chain.key_file, chain.chain_file
    mid_crl, _ = revoke_client_certificates(tmp_path)  # the intermediate's own (empty) CRL
    crl_file = tmp_path / "crls.pem"
    crl_file.write_bytes(mid_crl.read_bytes() + _root_crl(root, root_key))
    options = {
        "client_ca_file": str(tmp_path / "root.pem"),
        "client_cert_mode": "required",
        "client_crl_file": str(crl_file),
        "client_crl_check": "chain",
        "authenticator": CertificateAuthenticator(),
    }
    async with _server(pki, **options) as server:
        async with _client(
            server, pki, cert_file=str(chain_file), key_file=str(key_file)
        ) as client:
            assert client.client_id == "edge-9"
        replacement = tmp_path / "crls.new"
        replacement.write_bytes(mid_crl.read_bytes() + _root_crl(root, root_key, mid.serial_number))
        replacement.replace(crl_file)  # atomic, a new inode: the server re-reads it
        with pytest.raises(
            ConnectionClosed,
            match=r"intermediate CA certificate \(CN=Test intermediate\) revoked at",
        ):
            await _client(server, pki, cert_file=str(chain_file), key_file=str(key_file)).connect()
