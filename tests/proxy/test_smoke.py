from tests.proxy.harness import Client


def test_mutual_tls_roundtrip(make_proxy, pki, upstream):
    proxy = make_proxy("require")
    assert Client(pki, proxy.port()).roundtrip(b"hello") == b"hello"
    assert proxy.handshakes(result="ok") == 1
