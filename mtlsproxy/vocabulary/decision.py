"""What the client-certificate policy decided about one client (``policy.decision.decide``).

Both engines act on a ``Decision``, ``mtlsproxy explain`` narrates one, and the proxy counts,
logs and forwards what it says; none of them decides anything itself.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mtlsproxy.vocabulary.failures import Refusal
from mtlsproxy.vocabulary.frozen import quick_init
from mtlsproxy.vocabulary.identity import PeerIdentity


class Verdict(enum.StrEnum):
    """``would_refuse`` is audit mode (``client_auth.enforce: false``): a client enforcing would
    refuse is admitted, counted and logged, and its identity forwarded as unverified."""

    ADMITTED = "admitted"
    WOULD_REFUSE = "would_refuse"
    REFUSED = "refused"


class Evidence(enum.Enum):
    """How much of the client's chain the TLS stack has already checked, so the decision checks
    the rest and nothing twice."""

    UNCHECKED = "unchecked"  # the native engine: chain, validity, usage and CRLs checked here
    CHECKED_BY_OPENSSL = "checked_by_openssl"  # a full OpenSSL handshake verified the chain
    RESUMED = "resumed"  # a resumed session: the original client, checked again at ``now``


@quick_init
@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict, the client's identity (None when anonymous or unparsable), the refusal
    (set unless admitted) and the allow rule that matched (None: no allow-list, or none
    matched)."""

    verdict: Verdict
    identity: PeerIdentity | None = None
    refusal: Refusal | None = None
    rule: str | None = None

    @property
    def admitted(self) -> bool:
        """Whether application data may flow (admitted, or admitted in audit mode)."""
        return self.verdict is not Verdict.REFUSED

    @property
    def verified(self) -> bool:
        """A certificate was presented, verified and allowed."""
        return self.verdict is Verdict.ADMITTED and self.identity is not None

    @property
    def would_refuse(self) -> Refusal | None:
        return self.refusal if self.verdict is Verdict.WOULD_REFUSE else None
