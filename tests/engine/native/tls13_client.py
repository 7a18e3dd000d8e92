"""A minimal TLS 1.3 client built from the native building blocks, for tests only.

Python's ``ssl`` cannot choose key-share groups or cipher suites, send a KeyUpdate, or send a
CertificateVerify that is well encrypted but wrongly signed; this client can. It trusts
nothing (it does check the server's CertificateVerify signature and Finished).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from cryptography import x509

from mtlsproxy.engine.hello_extensions import ExtensionType
from mtlsproxy.engine.native import messages as msgs
from mtlsproxy.engine.native import signatures as sigs
from mtlsproxy.engine.native.key_schedule import KeySchedule, Transcript
from mtlsproxy.engine.native.record_layer import (
    MAX_PLAINTEXT_LENGTH,
    NO_PADDING,
    PaddingPolicy,
    RecordProtection,
    RecordReader,
    encode_record,
)
from mtlsproxy.engine.native.suites import NamedGroup, generate_key_share, get_cipher_suite
from mtlsproxy.engine.records import HandshakeType, Message

HANDSHAKE, ALERT, APPLICATION_DATA, CCS = 22, 21, 23, 20


class MiniClient:
    def __init__(
        self,
        *,
        suites: Sequence[int] = (0x1301, 0x1302, 0x1303),
        groups: Sequence[int] = (NamedGroup.X25519, NamedGroup.SECP256R1, NamedGroup.SECP384R1),
        share_groups: Sequence[int] | None = None,
        chain: Sequence[bytes] = (),
        key: object = None,
        session_id: bytes = b"",
        alpn: Sequence[str] = (),
        early_data: bool = False,
        signature_schemes: Sequence[int] = sigs.SUPPORTED_SCHEMES,
        server_name: str = "localhost",
        extra_extensions: Sequence[tuple[int, bytes]] = (),
        legacy_version: int = msgs.LEGACY_VERSION,
        padding: PaddingPolicy | None = None,
        on_retry: Callable[[MiniClient], None] | None = None,
    ) -> None:
        self.suites = tuple(suites)
        self.groups = tuple(groups)
        self.share_groups = tuple(groups[:1] if share_groups is None else share_groups)
        self.chain = tuple(chain)
        self.key = key
        self.session_id = session_id
        self.alpn = tuple(alpn)
        self.early_data = early_data
        self.signature_schemes = tuple(signature_schemes)
        self.server_name = server_name
        self.extra_extensions = tuple(extra_extensions)  # after ours, in this order
        self.legacy_version = legacy_version
        self.padding = padding  # of our protected records (RFC 8446 section 5.4)
        self.on_retry = on_retry  # changes the second ClientHello (a test's, legal or not)
        self.random = os.urandom(32)
        self._shares = {g: generate_key_share(g) for g in self.share_groups}
        self._records = RecordReader()
        self._assembler = msgs.HandshakeAssembler()
        self._first_hello = b""
        self.transcript: Transcript | None = None
        self.schedule: KeySchedule | None = None
        self.read: RecordProtection | None = None
        self.write: RecordProtection | None = None
        self.retry_group: int | None = None
        self.server_hello: msgs.ServerHello | None = None
        self.negotiated_alpn: str | None = None
        self.certificate_request: msgs.CertificateRequest | None = None
        self.server_chain: tuple[bytes, ...] = ()
        self.server_finished = False
        self.alerts: list[int] = []
        self.app_data = bytearray()
        self.key_updates: list[bool] = []
        self.tickets: list[bytes] = []  # NewSessionTicket bodies
        self.ccs_received = 0
        self.pending_hello: bytes | None = None  # a second ClientHello to send after an HRR

    # ClientHello

    def _hello_message(self) -> bytes:
        extensions = [
            (
                ExtensionType.SERVER_NAME,
                msgs.vector(b"\x00" + msgs.vector(self.server_name.encode(), 2), 2),
            ),
            (ExtensionType.SUPPORTED_VERSIONS, msgs.vector(b"\x03\x04", 1)),
            (ExtensionType.SUPPORTED_GROUPS, msgs.uint16_list(self.groups)),
            (ExtensionType.SIGNATURE_ALGORITHMS, msgs.uint16_list(self.signature_schemes)),
            (
                ExtensionType.KEY_SHARE,
                msgs.key_share_extension([(g, s.public_bytes()) for g, s in self._shares.items()]),
            ),
        ]
        if self.alpn:
            names = b"".join(msgs.vector(p.encode(), 1) for p in self.alpn)
            extensions.append((ExtensionType.ALPN, msgs.vector(names, 2)))
        if self.early_data:
            extensions.append((ExtensionType.EARLY_DATA, b""))
        extensions += self.extra_extensions
        message = msgs.client_hello(self.random, self.session_id, self.suites, extensions)
        if self.legacy_version != msgs.LEGACY_VERSION:
            message = message[:4] + self.legacy_version.to_bytes(2, "big") + message[6:]
        return message

    def client_hello(self) -> bytes:
        """The ClientHello in as many records as it needs (2^14 bytes each, section 5.1)."""
        self._first_hello = message = self._hello_message()
        return b"".join(
            encode_record(HANDSHAKE, message[start : start + MAX_PLAINTEXT_LENGTH], 0x0301)
            for start in range(0, len(message), MAX_PLAINTEXT_LENGTH)
        )

    # Server records

    def receive(self, data: bytes) -> None:
        self._records.feed(data)
        while (record := self._records.next_record()) is not None:
            if record.content_type == CCS:
                self.ccs_received += 1
            elif record.content_type == HANDSHAKE:
                self._assembler.feed(record.fragment)
                while (message := self._assembler.next_message()) is not None:
                    self._server_hello(message)
            elif record.content_type == ALERT:
                self.alerts.append(record.fragment[1])
            else:
                assert self.read is not None
                inner = self.read.decrypt(record)
                if inner.content_type == ALERT:
                    self.alerts.append(inner.content[1])
                elif inner.content_type == APPLICATION_DATA:
                    self.app_data += inner.content
                else:
                    self._assembler.feed(inner.content)
                    while (message := self._assembler.next_message()) is not None:
                        self._encrypted_message(message)

    def _server_hello(self, message: Message) -> None:
        hello = msgs.decode_server_hello(message.body)
        suite = get_cipher_suite(hello.cipher_suite)
        assert suite is not None
        if hello.is_retry_request:
            assert self.retry_group is None, "second HelloRetryRequest"
            share = hello.key_share
            assert share is not None
            self.retry_group = share.group
            self.transcript = Transcript(suite)
            self.transcript.update(self._first_hello)
            self.transcript.replace_with_message_hash()
            self.transcript.update(message.raw)
            self._shares = {share.group: generate_key_share(share.group)}
            self.early_data = False
            if self.on_retry is not None:
                self.on_retry(self)
            second = self._hello_message()
            self.transcript.update(second)
            self.pending_hello = encode_record(HANDSHAKE, second)
            return
        self.server_hello = hello
        if self.transcript is None:
            self.transcript = Transcript(suite)
            self.transcript.update(self._first_hello)
        share = hello.key_share
        assert share is not None and share.group in self._shares
        shared = self._shares[share.group].exchange(share.key_exchange)
        self.schedule = KeySchedule(suite, transcript=self.transcript)
        self.schedule.update_transcript(message.raw)
        self.schedule.derive_handshake_secrets(shared)
        self.read = RecordProtection.from_secret(
            suite, self.schedule.server_handshake_traffic_secret
        )
        self.write = RecordProtection.from_secret(
            suite, self.schedule.client_handshake_traffic_secret, padding=self._padding()
        )

    def _encrypted_message(self, message: Message) -> None:
        schedule = self.schedule
        assert schedule is not None
        if message.msg_type == HandshakeType.ENCRYPTED_EXTENSIONS:
            self.negotiated_alpn = msgs.decode_encrypted_extensions(message.body).alpn
        elif message.msg_type == HandshakeType.CERTIFICATE_REQUEST:
            self.certificate_request = msgs.decode_certificate_request(message.body)
        elif message.msg_type == HandshakeType.CERTIFICATE:
            self.server_chain = msgs.decode_certificate(message.body).chain
        elif message.msg_type == HandshakeType.CERTIFICATE_VERIFY:
            scheme, signature = msgs.decode_certificate_verify(message.body)
            leaf = x509.load_der_x509_certificate(self.server_chain[0])
            content = sigs.signed_content(schedule.transcript_hash(), server=True)
            sigs.verify(leaf, scheme, signature, content)
        elif message.msg_type == HandshakeType.FINISHED:
            schedule.verify_server_finished(message.body)
            schedule.update_transcript(message.raw)
            schedule.derive_application_secrets()
            self.read = RecordProtection.from_secret(
                schedule.suite, schedule.server_application_traffic_secret
            )
            self.server_finished = True
            return
        elif message.msg_type == HandshakeType.NEW_SESSION_TICKET:
            self.tickets.append(message.body)  # kept, never used: the client does not resume
            return
        elif message.msg_type == HandshakeType.KEY_UPDATE:
            assert self.read is not None
            self.key_updates.append(msgs.decode_key_update(message.body))
            self.read = self.read.next_generation()
            return
        else:
            raise AssertionError(f"unexpected message {message.msg_type}")
        schedule.update_transcript(message.raw)

    # Our flight

    def flight_messages(
        self, *, bad_signature: bool = False, bad_finished: bool = False, send_chain: bool = True
    ) -> list[bytes]:
        """Certificate, CertificateVerify (if a chain), Finished, each added to the transcript."""
        schedule = self.schedule
        assert schedule is not None and self.server_finished
        out: list[bytes] = []
        chain = self.chain if send_chain else ()
        if self.certificate_request is not None:
            certificate = msgs.certificate(chain)
            schedule.update_transcript(certificate)
            out.append(certificate)
            if chain:
                leaf = x509.load_der_x509_certificate(chain[0])
                scheme = sigs.schemes_for_key(leaf.public_key())[0]
                content = sigs.signed_content(schedule.transcript_hash(), server=False)
                signature = sigs.sign(self.key, scheme, content)
                if bad_signature:
                    signature = signature[:-1] + bytes((signature[-1] ^ 1,))
                verify = msgs.certificate_verify(scheme, signature)
                schedule.update_transcript(verify)
                out.append(verify)
        verify_data = schedule.client_finished_verify_data()
        if bad_finished:
            verify_data = bytes((verify_data[0] ^ 1,)) + verify_data[1:]
        finished = msgs.finished(verify_data)
        schedule.update_transcript(finished)
        out.append(finished)
        return out

    def seal(self, content: bytes, content_type: int = HANDSHAKE) -> bytes:
        assert self.write is not None
        return self.write.encrypt_fragmented(content_type, content)

    def flight(self, **options: bool) -> bytes:
        """The whole flight in one record, then switch to application keys."""
        data = self.seal(b"".join(self.flight_messages(**options)))
        self.to_application_keys()
        return data

    def to_application_keys(self) -> None:
        schedule = self.schedule
        assert schedule is not None
        self.write = RecordProtection.from_secret(
            schedule.suite, schedule.client_application_traffic_secret, padding=self._padding()
        )

    def _padding(self) -> PaddingPolicy:
        return NO_PADDING if self.padding is None else self.padding

    def key_update(self, requested: bool) -> bytes:
        data = self.seal(msgs.key_update(requested))
        assert self.write is not None
        self.write = self.write.next_generation()
        return data
