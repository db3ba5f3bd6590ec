"""Protection rows of the Ledger section of docs/security.md (trust that does not rest on the coordinator)."""

from __future__ import annotations

from typing import Any

from protections import _patch, row


@row(
    "ledger-tamper",
    "`fedgov.ledger.merkle:verify_consistency` (RFC 9162 consistency check every witness runs) accepts anything",
    "tests/test_witness.py::test_rewritten_history_detected_and_halts",
)
def _ledger_tamper() -> None:
    _patch("fedgov.ledger.merkle:verify_consistency", lambda *a, **k: None)


@row(
    "signed-facts",
    "`fedgov.ledger.facts:_verifies` (the department's Ed25519 signature over a fact) always says yes",
    "tests/test_ledger_facts.py::test_coordinator_forged_fact_is_named_and_not_counted",
    "tests/test_ledger_stack.py::test_fact_forged_at_the_coordinator_is_named_by_verify",
    level="stack",
)
def _signed_facts() -> None:
    _patch("fedgov.ledger.facts:_verifies", lambda *a, **k: True)


@row(
    "ledger-revoked-signers",
    "`fedgov.ledger.facts:_revocation_verdict` (a fact signed by a key whose certificate was revoked "
    "before the fact's time, or that arrived after the revocation, is rejected) says \"not revoked\"",
    "tests/test_ledger_facts.py::test_a_leaked_key_signing_after_revocation_fails_ledger_verify",
)
def _revoked_signers() -> None:
    _patch("fedgov.ledger.facts:_revocation_verdict", lambda *a, **k: None)


def _any_one(vouched: Any, k: int) -> Any:
    if not vouched:
        return None
    name, head = max(vouched.items(), key=lambda kv: kv[1].size)
    return head, [name]


@row(
    "cosigned-heads-quorum",
    "`fedgov.ledger.witness:quorum_head` counts a head with one cosignature instead of k of n",
    "tests/test_witness.py::test_a_head_counts_only_with_k_valid_cosignatures",
    "tests/test_ledger_stack.py::test_rewritten_ledger_is_caught_by_the_node_witnesses",
    level="stack",
)
def _quorum() -> None:
    for target in ("fedgov.ledger.witness", "fedgov.node.witness", "fedgov.cli_ledger"):
        _patch(f"{target}:quorum_head", _any_one)


@row(
    "split-view-alarm",
    "`fedgov.node.witness:NodeWitness._split` (alarm + halt on a peer head that is not one history) does nothing",
    "tests/test_witness.py::test_split_view_is_caught_by_sealed_gossip",
    "tests/test_ledger_witness_stack.py::test_split_view_raises_an_alarm_at_both_nodes",
    level="stack",
)
def _split_view() -> None:
    _patch("fedgov.node.witness:NodeWitness._split", lambda self, *a, **k: None)


@row(
    "witness-starvation",
    "`fedgov.node.witness:NodeWitness._check_starvation` (alarm when no new head arrives) does nothing",
    "tests/test_witness.py::test_errors_are_not_skipped_and_withheld_heads_starve",
    "tests/test_ledger_witness_stack.py::test_withheld_heads_raise_the_starvation_alarm",
    level="stack",
)
def _starvation() -> None:
    _patch("fedgov.node.witness:NodeWitness._check_starvation", lambda self: None)


@row(
    "inclusion-of-own-facts",
    "`fedgov.node.witness:NodeWitness._check_own_facts` (inclusion proof of every fact the node signed) does nothing",
    "tests/test_witness.py::test_own_facts_are_checked_for_inclusion",
    "tests/test_ledger_witness_stack.py::test_facts_the_coordinator_withheld_raise_an_alarm_at_their_department",
    level="stack",
)
def _own_facts() -> None:
    _patch("fedgov.node.witness:NodeWitness._check_own_facts", lambda self, witness: None)


_BUNDLE = "tests/test_ledger_bundle.py::"


@row(
    "evidence-bundle",
    "`fedgov.ledger.merkle:verify_inclusion` (each bundled entry is the leaf its RFC 9162 proof claims under the "
    "anchor head) accepts anything",
    _BUNDLE + "test_one_byte_of_one_entry_changed_names_the_entry",
    _BUNDLE + "test_dropped_proof_step_names_the_entry",
    _BUNDLE + "test_cli_bundle_and_offline_verify",
)
def _evidence_bundle() -> None:
    _patch("fedgov.ledger.merkle:verify_inclusion", lambda *a, **k: None)


@row(
    "evidence-bundle-quorum",
    "`fedgov.ledger.bundle:quorum_head` counts the bundle's anchor with one cosignature instead of k of n",
    _BUNDLE + "test_head_with_a_missing_cosignature_fails_naming_the_head",
)
def _bundle_quorum() -> None:
    _patch("fedgov.ledger.bundle:quorum_head", _any_one)


@row(
    "console-ledger-proofs",
    "`fedgov.auditor:prove_inclusion` (the Ledger page proves every entry it lists under the latest head) says yes",
    "tests/test_console_ledger_browser.py::test_a_tampered_ledger_shows_failed_naming_the_entry",
    level="stack",
)
def _console_proofs() -> None:
    from fedgov.auditor import Proved

    _patch("fedgov.auditor:prove_inclusion", lambda *a, **k: Proved(True, []))
