"""What each job kind's protocol page says leaves a node and what each party learns.

Approvers read this next to the manifest (:mod:`fedgov.node.brief`). Every
``learns`` excerpt is quoted from ``docs/protocols/<kind>.md`` (whitespace and
markdown emphasis aside); ``tests/test_brief.py`` checks that each one is still
on its page, so the approver's view cannot drift from the documented claim.

``sends`` lists, per role, the messages a node in that role sends: the relay
step name, the role(s) it goes to and a size (a bound or a formula in the
node's row count ``n``). Every message is sealed to its recipient; the
coordinator relays it and learns its size and timing.

Pure data; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from fedgov.manifest import Manifest


@dataclass(frozen=True)
class Message:
    """One kind of message a role sends."""

    step: str  # relay step name, e.g. "psi/host-set"
    to: str  # a role of the same kind, or "requester"
    size: str  # bound or formula ("n" = this node's rows)
    when: str = "once"
    bytes_per_row: int | None = None  # for an estimate from the row count
    fixed_bytes: int | None = None
    #: sent only when this manifest parameter is true (``extra:KEY``: this participant's KEY is set)
    needs: str = ""

    def applies(self, parameters: dict, extra: dict) -> bool:
        """Whether this message is sent under these manifest parameters / this participant's extra keys."""
        if not self.needs:
            return True
        if self.needs.startswith("extra:"):
            return bool(extra.get(self.needs[len("extra:"):]))
        return bool(parameters.get(self.needs))


@dataclass(frozen=True)
class KindPage:
    kind: str
    page: str  # docs/protocols/<name>.md
    #: (party, excerpt of the page's "what each party learns")
    learns: tuple[tuple[str, str], ...]
    #: role -> messages that role sends
    sends: dict[str, tuple[Message, ...]]
    #: (manifest, node) -> the node's role in this kind
    role_of: Callable[[Manifest, str], str]


def _first_data(m: Manifest) -> str:
    data = m.data_participants
    return data[0].node if data else ""


def _guest_host(m: Manifest, node: str) -> str:
    p = m.participant(node)
    if p.role == "arbiter":
        return "arbiter"
    guest = next((q.node for q in m.data_participants if q.role == "guest"), _first_data(m))
    return "guest" if node == guest else "host"


def _cohort_role(m: Manifest, node: str) -> str:
    agg = next((p.node for p in m.participants if p.role == "aggregator"), _first_data(m))
    return "aggregator" if node == agg else "participant"


def _he_role(m: Manifest, node: str) -> str:
    p = m.participant(node)
    if p.role == "arbiter":
        if node == m.parameters.get("key_holder"):
            return "key holder"
        if node == m.parameters.get("combiner"):
            return "combiner"
        return "arbiter"
    return p.role or "participant"


def _hfl_role(m: Manifest, node: str) -> str:
    p = m.participant(node)
    if p.role == "arbiter":
        if node == m.parameters.get("aggregator"):
            return "aggregator"
        if node == m.parameters.get("key_holder"):
            return "key holder"
        return "arbiter"
    return "region"


_RESULT = Message("result", "requester", "this node's result JSON, sealed to the requester", fixed_bytes=2048)

PAGES: dict[str, KindPage] = {
    "cohort-count": KindPage(
        "cohort-count",
        "docs/protocols/cohort-count.md",
        (
            ("aggregator", "every `r_i` (released counts; `None` for suppressed)"),
            ("other participants", "nothing from the protocol"),
            ("coordinator", "envelope sizes/timing; the released result"),
            ("requester", "the released `r_i` and their total"),
        ),
        {
            "participant": (
                Message("cohort-count/count", "aggregator", "one released count (or suppressed), < 100 bytes",
                        fixed_bytes=100),
                _RESULT,
            ),
            "aggregator": (_RESULT,),
        },
        _cohort_role,
    ),
    "psi": KindPage(
        "psi",
        "docs/protocols/psi.md",
        (
            ("guest, alignment", "which of its own rows are in `X ∩ Y_i` for **each** host"),
            ("guest, cardinality", "`m_i`; `|X ∩ Y_i|`; the global size."),
            ("named host, alignment", "which of its own rows are in the **global** intersection"),
            ("unnamed host", "`n` only."),
            ("relay", "message sizes and timing"),
        ),
        {
            "guest": (
                Message("psi/guest-set", "host", "33 bytes x n (masked IDs, once per host)", bytes_per_row=33),
                Message("psi/result", "host", "14 + 4 bytes x matched rows, only to hosts named in [results]"),
                _RESULT,
            ),
            "host": (
                Message("psi/host-set", "guest", "33 bytes x n (masked IDs)", bytes_per_row=33),
                Message("psi/reply", "guest", "33 bytes x the guest's rows (re-masked)"),
                _RESULT,
            ),
        },
        _guest_host,
    ),
    "vertical-lr": KindPage(
        "vertical-lr",
        "docs/protocols/vertical-lr.md",
        (
            ("arbiter", "sizes, counts and timing of messages; feature counts; masked slots, real and imaginary (statistically hidden)"),
            ("host", "its own batch gradients `X_hᵀ d` (as in FATE), its own weights"),
            ("guest", "its own batch gradients (incl. intercept), its own weights"),
        ),
        {
            "guest": (
                Message("psi/*", "host", "pairwise ECDH-PSI alignment: 33 bytes x n per host", bytes_per_row=33),
                Message("vlr/resid", "host", "CKKS ciphertexts of residuals, per batch", "per batch"),
                Message("vlr/grad", "arbiter", "masked gradient ciphertexts, per batch", "per batch"),
                Message("vlr/val", "arbiter", "masked validation total, per epoch", "per epoch"),
                Message("vlr/score-total", "arbiter", "masked total scores of the held-out rows, once",
                        needs="extra:eval_dataset"),
                Message("vlr/coalition", "arbiter", "masked coalition scores, one per coalition of departments",
                        needs="shapley"),
                Message("vlr/coalition", "arbiter", "an empty end-of-requests marker (0 bytes), once"),
                _RESULT,
            ),
            "host": (
                Message("psi/*", "guest", "pairwise ECDH-PSI alignment: 33 bytes x n", bytes_per_row=33),
                Message("vlr/score", "guest", "CKKS ciphertexts of partial scores, per batch", "per batch"),
                Message("vlr/grad", "arbiter", "masked gradient ciphertexts, per batch", "per batch"),
                Message("vlr/val", "guest", "CKKS ciphertexts of validation scores, per epoch", "per epoch"),
                _RESULT,
            ),
            "arbiter": (
                Message("vlr/context", "guest", "the public CKKS context (no secret key), once"),
                Message("vlr/grad-reply", "guest", "masked decrypted slots, per batch", "per batch"),
                Message("vlr/grad-reply", "host", "masked decrypted slots, per batch", "per batch"),
                Message("vlr/score-reply", "guest", "masked decrypted total scores of the held-out rows"),
                Message("vlr/coalition-reply", "guest", "masked coalition scores, one per coalition",
                        needs="shapley"),
                _RESULT,
            ),
        },
        _guest_host,
    ),
    "vertical-lr-score": KindPage(
        "vertical-lr-score",
        "docs/protocols/vertical-lr.md",
        (("guest", "in scoring: the final total score per row"),),
        {
            "guest": (Message("vlr/score-total", "arbiter", "masked total scores, 1 slot per row"),
                      Message("vlr/coalition", "arbiter", "an empty end-of-requests marker (0 bytes), once"),
                      _RESULT),
            "host": (Message("vlr/score", "guest", "CKKS ciphertexts of partial scores, 1 slot per row"), _RESULT),
            "arbiter": (_RESULT,),
        },
        _guest_host,
    ),
    "he-stats": KindPage(
        "he-stats",
        "docs/protocols/he-stats.md",
        (
            ("cohort holder (C)", "Nothing from ciphertexts."),
            ("owner (O)", "Not the cohort membership of any row: real parts are masked (above), imaginary parts flooded."),
            ("requester (R)", "the release — per cell noisy count / sum / mean / variance / histogram, the noisy total when it passes, suppression reasons, ε spent, ε remaining."),
            ("coordinator", "sizes and timing (results are sealed to the requester)."),
        ),
        {
            "cohort": (
                Message("he-stats/counts", "owner", "CKKS ciphertexts of per-group counts"),
                Message("he-stats/moments", "owner", "CKKS ciphertexts of per-group moments"),
                _RESULT,
            ),
            "owner": (
                Message("he-stats/hello", "cohort", "the public CKKS context and encrypted values, ~ n slots"),
                Message("he-stats/plan", "cohort", "which cells pass the owner's rules"),
                _RESULT,
            ),
            "region": (
                Message("he-stats-h/counts", "combiner", "CKKS ciphertexts of this region's per-group parts"),
                Message("he-stats-h/moments", "combiner", "CKKS ciphertexts of this region's moments"),
                _RESULT,
            ),
            "combiner": (Message("he-stats-h/*", "key holder", "the sum of the regions' ciphertexts"), _RESULT),
            "key holder": (Message("he-stats-h/hello", "region", "the public CKKS context"), _RESULT),
        },
        _he_role,
    ),
    "eligibility-check": KindPage(
        "eligibility-check",
        "docs/protocols/eligibility-check.md",
        (
            ("civil affairs (C)", "per applicant, which rules pass (its entitled output)"),
            ("department (D)", "n and the batch positions of its own matched records; nothing else."),
            ("key holder (K)", "the number of tests and slots"),
            ("coordinator", "sizes and timing of the sealed messages it relays."),
        ),
        {
            "guest": (
                Message("psi/*", "host", "ECDH-PSI: 33 bytes x n per department", bytes_per_row=33),
                Message("elig/blinded", "arbiter", "blinded margins, one slot per test"),
                _RESULT,
            ),
            "host": (
                Message("psi/*", "guest", "ECDH-PSI: 33 bytes x n", bytes_per_row=33),
                Message("elig/contribution", "guest", "CKKS ciphertexts of this department's rule inputs"),
                _RESULT,
            ),
            "arbiter": (
                Message("elig/hello", "host", "the public CKKS context"),
                Message("elig/signs", "guest", "one sign per test"),
                _RESULT,
            ),
        },
        _guest_host,
    ),
    "horizontal-fl": KindPage(
        "horizontal-fl",
        "docs/protocols/horizontal-fl.md",
        (
            ("aggregator", "Not any region's update"),
            ("key holder", "nothing per region."),
            ("region", "the global models it is sent (the validation region: also the final track models it evaluates)."),
        ),
        {
            "region": (
                Message("flower updates", "aggregator", "one (encrypted) model update per round and track",
                        "per round"),
                Message("hfl/validation", "aggregator", "this region's held-out rows (eval_dataset)",
                        needs="extra:eval_dataset"),
                _RESULT,
            ),
            "aggregator": (Message("global model", "region", "the global model per round", "per round"), _RESULT),
            "key holder": (Message("decrypted sums", "aggregator", "the sum of updates per round", "per round"),
                           _RESULT),
        },
        _hfl_role,
    ),
}


def page(kind: str) -> KindPage:
    """The protocol page data of ``kind`` (KeyError for an unknown kind)."""
    return PAGES[kind]
