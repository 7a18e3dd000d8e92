"""Differential test: the verifier never admits a client that OpenSSL refuses.

Each seed builds a random PKI "world" (root, optional intermediates, a few leaves, optional
CRLs) from weighted choices over the dimensions the hardening issue names: validity,
extendedKeyUsage and keyUsage, basicConstraints and pathLen, nameConstraints with and without
SANs, CRLs with and without IssuingDistributionPoint, delta, critical and stale forms, chains
with and without intermediates, and key types and sizes. Every leaf is decided by
``policy.decision.decide`` (a load error counts as a refusal) and by

    openssl verify -purpose sslclient -auth_level 2 -attime NOW -CAfile root.pem
                   [-untrusted intermediates.pem] [-crl_check_all -CRLfile crls.pem] leaf...

(all leaves of a world in one invocation). A leaf that ``decide`` admits and OpenSSL refuses is
a failure, unless ``DELIBERATE`` (mirroring the verify.py docstring) explains it. The opposite
(refused here, admitted by OpenSSL) is allowed: it is counted and the categories are printed
with ``-s``, so over-strictness stays visible.

The normal suite runs 120 worlds (360 cases, about 10 s); the large run (2000 worlds, 6000
cases, 2-3 minutes) is marked slow: CI runs it, `pytest -m "not slow"` skips it.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from mtlsproxy.pki import write_pem
from mtlsproxy.policy.decision import ClientPolicy, decide
from mtlsproxy.policy.model import ClientAuth, ClientAuthMode
from mtlsproxy.vocabulary.decision import Verdict

from .minting import DAY, NOW, cert, crl, dp, idp, key, ku, name

pytestmark = [
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command"),
    pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning"),
]

FAST_SEEDS = range(120)  # x 3 leaves = 360 cases
SLOW_SEEDS = range(1000, 3000)
LEAVES_PER_WORLD = 3

# Admitted here, refused by OpenSSL, on purpose (see verify.py). Empty: no known exception.
DELIBERATE: dict[str, str] = {}

CRL_A, CRL_B = "http://crl.example/a.crl", "http://crl.example/b.crl"
CLIENT, SERVER = ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH
ANY = ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE


@dataclass
class World:
    """One random PKI; ``notes`` names every choice, for the failure message.

    The first option of every choice is the conforming one; each world has a mutation rate
    (the chance that a choice is drawn from all options by weight instead), so that worlds
    range from clean, where the verifiers should agree on admitting, to thoroughly odd."""

    rng: random.Random
    notes: list[str] = field(default_factory=list)
    rate: float = 1.0

    def __post_init__(self) -> None:
        self.rate = self.rng.choice([0.0, 0.05, 0.1, 0.2, 0.4])

    def pick(self, label: str, options: dict[str, int], *, free: bool = False) -> str:
        if free or self.rng.random() < self.rate:
            choice = self.rng.choices(list(options), weights=list(options.values()))[0]
        else:
            choice = next(iter(options))
        self.notes.append(f"{label}={choice}")
        return choice


def _key_usage(world: World, label: str, *, ca: bool):
    choice = world.pick(
        label,
        {"default": 12, "none": 2, "no-crl-sign": 1, "no-digsig": 1, "agreement": 1}
        if ca
        else {"default": 12, "none": 2, "no-digsig": 1, "agreement": 1},
    )
    if choice == "none":
        return None
    if choice == "no-crl-sign":
        return ku(ca=True, crl_sign=False)
    if choice == "no-digsig":
        return ku(ca=ca, digital_signature=False, key_encipherment=True)
    if choice == "agreement":
        return ku(ca=ca, digital_signature=False, key_agreement=True)
    return ku(ca=ca)


def _constraints(world: World, label: str) -> x509.NameConstraints | None:
    choice = world.pick(
        label, {"none": 10, "dns": 3, "dns-excluded": 1, "email": 1, "uri": 1, "dirname": 1}
    )
    return {
        "none": None,
        "dns": x509.NameConstraints([x509.DNSName("partner.example")], None),
        "dns-excluded": x509.NameConstraints(None, [x509.DNSName("corp.example")]),
        "email": x509.NameConstraints([x509.RFC822Name("partner.example")], None),
        "uri": x509.NameConstraints([x509.UniformResourceIdentifier(".partner.example")], None),
        "dirname": x509.NameConstraints([x509.DirectoryName(name("partner"))], None),
    }[choice]


def _validity(world: World, label: str) -> dict:
    choice = world.pick(label, {"ok": 12, "expired": 1, "not-yet": 1})
    if choice == "expired":
        return {"not_before": NOW - 30 * DAY, "not_after": NOW - DAY}
    if choice == "not-yet":
        return {"not_before": NOW + DAY, "not_after": NOW + 30 * DAY}
    return {}


def _ca(world: World, label: str, index: int, issuer=None, issuer_key=None):
    kind = world.pick(
        f"{label}.key", {"ec256": 10, "rsa2048": 2, "ec384": 1, "rsa1024": 1, "ed25519": 1}
    )
    private = key(kind, index)
    path_length = {"none": None, "0": 0, "1": 1}[
        world.pick(f"{label}.pathlen", {"none": 6, "0": 2, "1": 1})
    ]
    eku = {"none": None, "client": [CLIENT], "server": [SERVER]}[
        world.pick(f"{label}.eku", {"none": 10, "client": 1, "server": 1})
    ]
    certificate = cert(
        label,
        private,
        issuer,
        issuer_key,
        ca=True,
        path_length=path_length,
        key_usage=_key_usage(world, f"{label}.ku", ca=True),
        eku=eku,
        name_constraints=_constraints(world, f"{label}.nc"),
        **_validity(world, f"{label}.validity"),
    )
    return certificate, private


def _leaf(world: World, label: str, index: int, issuer, issuer_key) -> x509.Certificate:
    kind = world.pick(
        f"{label}.key",
        {"ec256": 10, "rsa2048": 2, "ec384": 1, "rsa1024": 1, "ec224": 1, "ec192": 1}
        | {"ed25519": 1, "k256": 1, "dsa2048": 1},
    )
    private = key(kind, 10 + index)
    cn = {"plain": "svc", "host-in": "svc.partner.example", "host-out": "admin.corp.example"}[
        world.pick(f"{label}.cn", {"plain": 4, "host-in": 2, "host-out": 2})
    ]
    email = world.pick(f"{label}.email", {"none": 6, "in": 1, "out": 1})
    subject = name(cn, **({} if email == "none" else {"email": f"a@{email}.partner.example"}))
    if email == "out":
        subject = name(cn, email="root@corp.example")
    sans = {
        "none": [],
        "dns-in": [x509.DNSName("svc.partner.example")],
        "dns-out": [x509.DNSName("admin.corp.example")],
        "uri": [x509.UniformResourceIdentifier("spiffe://partner.example/svc")],
        "uri-out": [x509.UniformResourceIdentifier("https://corp.example/svc")],
        "email-out": [x509.RFC822Name("root@corp.example")],
    }[
        world.pick(
            f"{label}.san",
            {"none": 4, "dns-in": 3, "dns-out": 2, "uri": 2, "uri-out": 1, "email-out": 1},
        )
    ]
    eku = {
        "client": [CLIENT],
        "server": [SERVER],
        "none": None,
        "any": [ANY],
        "both": [SERVER, CLIENT],
    }[world.pick(f"{label}.eku", {"client": 8, "server": 1, "none": 2, "any": 1, "both": 1})]
    points = {
        "none": None,
        "a": [dp(CRL_A)],
        "b": [dp(CRL_B)],
        "a-some": [dp(CRL_A, frozenset({x509.ReasonFlags.key_compromise}))],
    }[world.pick(f"{label}.crldp", {"none": 6, "a": 2, "b": 1, "a-some": 1})]
    leaf_is_ca = world.pick(f"{label}.bc", {"leaf": 20, "ca": 1}) == "ca"
    return cert(
        subject,
        private,
        issuer,
        issuer_key,
        ca=leaf_is_ca,
        key_usage=_key_usage(world, f"{label}.ku", ca=False),
        eku=eku,
        sans=sans,
        crl_dp=points,
        **_validity(world, f"{label}.validity"),
    )


def _crl_for(world: World, label: str, issuer, issuer_key, revoked: list[int], wrong_key):
    choice = world.pick(
        label,
        {"plain": 10, "none": 3, "idp-user": 1, "idp-ca": 1, "idp-a": 1, "idp-b": 1}
        | {"some-reasons": 1, "delta": 1, "critical-number": 1, "stale": 1, "future": 1}
        | {"wrong-key": 1, "revoking": 3},
    )
    if choice == "none":
        return None
    options: dict = {}
    signer = wrong_key if choice == "wrong-key" else issuer_key
    if choice == "revoking":
        options["revoked"] = revoked
    scopes: dict[str, Callable[[], x509.IssuingDistributionPoint]] = {
        "idp-user": lambda: idp(only_user=True),
        "idp-ca": lambda: idp(only_ca=True),
        "idp-a": lambda: idp(uri=CRL_A),
        "idp-b": lambda: idp(uri=CRL_B),
        "some-reasons": lambda: idp(reasons=frozenset({x509.ReasonFlags.key_compromise})),
    }
    if choice in scopes:
        options["scope"] = scopes[choice]()
    if choice == "delta":
        options["delta_of"] = 1
    if choice == "critical-number":
        options["number_critical"] = True
    if choice == "stale":
        options["next_update"] = NOW - timedelta(hours=1)
    built = crl(issuer, signer, **options)
    if choice == "future":  # thisUpdate after now
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer.subject)
            .last_update(NOW + timedelta(hours=2))
            .next_update(NOW + 7 * DAY)
            .add_extension(x509.CRLNumber(1), critical=False)
        )
        built = builder.sign(issuer_key, crl(issuer, issuer_key).signature_hash_algorithm)
    return built


@dataclass
class Case:
    notes: str
    ours: bool  # admitted by decide()
    why: str  # decide()'s refusal, if any
    openssl: bool
    openssl_output: str


def run_world(seed: int, directory: Path) -> list[Case]:
    world = World(random.Random(seed))
    directory.mkdir()
    root, root_key = _ca(world, "root", 0)
    chain_cas: list[tuple[x509.Certificate, object]] = [(root, root_key)]
    depth = int(world.pick("intermediates", {"0": 5, "1": 6, "2": 1}, free=True))
    for level in range(depth):
        issuer, issuer_key = chain_cas[-1]
        chain_cas.append(_ca(world, f"inter{level}", 1 + level, issuer, issuer_key))
    sent = [c for c, _ in reversed(chain_cas[1:])]
    if sent and world.pick("sent", {"all": 8, "missing": 1}) == "missing":
        sent = sent[1:]
    issuer, issuer_key = chain_cas[-1]
    leaves = [_leaf(world, f"leaf{i}", i, issuer, issuer_key) for i in range(LEAVES_PER_WORLD)]
    crls = []
    if world.pick("crl-check", {"off": 1, "on": 2}, free=True) == "on":
        for position, (ca, ca_key) in enumerate(chain_cas):
            below = [c for c, _ in chain_cas[position + 1 : position + 2]] or leaves[:1]
            made = _crl_for(
                world,
                f"crl{position}",
                ca,
                ca_key,
                [c.serial_number for c in below],
                key("ec256", 9),
            )
            if made is not None:
                crls.append(made)
        if not crls:  # -crl_check_all with no CRL at all: make the choice explicit
            crls.append(crl(root, root_key))
            world.notes.append("crl0=plain(forced)")
    ca_file = write_pem(directory / "root.pem", root)
    crl_file = write_pem(directory / "crls.pem", *crls) if crls else None
    auth = ClientAuth(ClientAuthMode.REQUIRE, ca=ca_file, crl=crl_file)
    try:
        policy: ClientPolicy | None = ClientPolicy.compile(auth)
    except ValueError as error:
        policy = None
        world.notes.append(f"load-error={error}")
    leaf_files = []
    for index, leaf in enumerate(leaves):
        leaf_files.append(write_pem(directory / f"leaf{index}.pem", leaf))
    command = [
        "openssl", "verify", "-purpose", "sslclient", "-auth_level", "2",
        "-attime", str(int(NOW.timestamp())), "-CAfile", str(ca_file),
    ]  # fmt: skip
    if sent:
        command += ["-untrusted", str(write_pem(directory / "untrusted.pem", *sent))]
    if crl_file is not None:
        command += ["-crl_check_all", "-CRLfile", str(crl_file)]
    result = subprocess.run(
        [*command, *map(str, leaf_files)], capture_output=True, text=True, timeout=30
    )
    output = result.stdout + result.stderr
    cases = []
    for index, leaf in enumerate(leaves):
        chain = tuple(c.public_bytes(Encoding.DER) for c in (leaf, *sent))
        decision = decide(policy, chain, NOW) if policy is not None else None
        ours = decision is not None and decision.verdict is Verdict.ADMITTED
        why = (
            "load error" if decision is None else str(decision.refusal and decision.refusal.detail)
        )
        theirs = f"{leaf_files[index]}: OK" in output
        notes = " ".join(
            n for n in world.notes if not n.startswith("leaf") or n.startswith(f"leaf{index}.")
        )
        cases.append(Case(f"seed {seed} leaf{index}: {notes}", ours, why, theirs, output))
    return cases


def differential(seeds: range, tmp_path: Path) -> None:
    tally: Counter[tuple[bool, bool]] = Counter()
    failures, stricter = [], []
    for seed in seeds:
        for case in run_world(seed, tmp_path / str(seed)):
            tally[case.ours, case.openssl] += 1
            if case.ours and not case.openssl and not any(k in case.notes for k in DELIBERATE):
                failures.append(f"{case.notes}\n  openssl said: {case.openssl_output.strip()}")
            if case.openssl and not case.ours:
                stricter.append(f"{case.why}  [{case.notes}]")
    print(
        f"\n{sum(tally.values())} cases: both admit {tally[True, True]}, both refuse "
        f"{tally[False, False]}, only OpenSSL admits {tally[False, True]}, only mtlsproxy "
        f"admits {tally[True, False]}"
    )
    print("only OpenSSL admits (over-strict here):", *stricter, sep="\n  ")
    assert tally[True, True] > len(seeds) // 4, "too few admitted cases: the generator is off"
    assert not failures, "admitted here, refused by OpenSSL:\n" + "\n".join(failures[:10])


def test_differential_against_openssl(tmp_path: Path) -> None:
    differential(FAST_SEEDS, tmp_path)


@pytest.mark.slow  # 6000 cases, 2-3 minutes; CI runs it (pytest -m "not slow" skips it)
def test_differential_against_openssl_large(tmp_path: Path) -> None:
    differential(SLOW_SEEDS, tmp_path)
