"""PSI sizes and aligned-ID recipients are the owners' to release (issue 11, attack 7),
through the protocol module and the node's policy check with the owners' defaults.

The attack: ``intersection_size`` and ``pairwise_sizes`` went to the requester
unsuppressed and onto the ledger, and the analyst's ``[results] recipients``
decided which host learns who applied.
"""

from __future__ import annotations

from typing import Any

import pytest

from fedgov.manifest import parse_manifest
from fedgov.params import default_disclosure, disclosure_refusals, parse_disclosure
from fedgov.protocols import psi


def manifest(params: str = "", recipients: str = '["requester"]') -> Any:
    return parse_manifest(
        '[job]\nkind = "psi"\npurpose = "test-psi"\n'
        f"[parameters]\n{params}\n"
        '[[participants]]\nnode = "civil"\ndataset = "d"\nfields = ["id"]\nrole = "guest"\n'
        '[[participants]]\nnode = "tax"\ndataset = "d"\nfields = ["id"]\nrole = "host"\n'
        '[[participants]]\nnode = "hrss"\ndataset = "d"\nfields = ["id"]\nrole = "host"\n'
        f"[results]\nrecipients = {recipients}\n"
    )


def refused(m: Any, node: str, policy: dict[str, Any] | None = None) -> list[str]:
    settings = parse_disclosure(policy or {}, default_disclosure(), "policy.toml: datasets.d.disclosure")
    return [str(r) for r in disclosure_refusals(m, m.participant(node), settings, "policy.toml: datasets.d.disclosure")]


def test_defaults_release_no_size_and_deliver_ids_to_nobody() -> None:
    d = default_disclosure()
    assert d["psi_size_release"] == psi.DEFAULT_SIZE_RELEASE == "none"
    assert d["psi_size_ledger"] is False and d["psi_id_recipients"] == []
    # the protocol: the guest learns its sizes (inherent), releases none of them
    res, _ = _run_local()
    assert res["guest"].size == 40
    assert psi.release_sizes(res["guest"].size, res["guest"].pairwise_sizes) == {}


def _run_local() -> tuple[dict[str, psi.PsiResult], None]:
    guest = [f"p{i}" for i in range(100)]
    hosts = {"tax": [f"p{i}" for i in range(50, 150)], "hrss": [f"p{i}" for i in range(60, 200)]}
    return psi.run_local("j", guest, hosts, workers=1), None


def test_release_levels_round_and_suppress() -> None:
    assert psi.release_sizes(40, {"tax": 50, "hrss": 7}, level="exact") == {
        "intersection_size": 40, "pairwise_sizes": {"tax": 50, "hrss": 7}}
    out = psi.release_sizes(44, {"tax": 56, "hrss": 7}, level="rounded", rounding=10, minimum=11)
    assert out["intersection_size"] == 40 and out["pairwise_sizes"] == {"tax": 60, "hrss": None}
    with pytest.raises(Exception, match="unknown size release"):
        psi.release_sizes(1, {}, level="all")


def test_a_looser_ask_is_refused_naming_the_policy_key() -> None:
    # align mode, defaults: fine (nothing released, nobody else receives IDs)
    assert refused(manifest('mode = "align"'), "civil") == []
    # cardinality mode releases the size: refused by every owner with the defaults
    for node in ("civil", "tax", "hrss"):
        (r,) = refused(manifest('mode = "cardinality"'), node)
        assert "psi_size_release" in r and "cardinality" in r, r
    # exact sizes where the owner allows rounded only; finer rounding; lower minimum
    assert "psi_size_release" in refused(manifest('size_release = "exact"'), "tax",
                                         {"psi_size_release": "rounded"})[0]
    got = refused(manifest('size_release = "rounded"\nsize_rounding = 2\nsize_min = 3'), "tax",
                  {"psi_size_release": "rounded"})
    assert any("psi_size_rounding" in r for r in got) and any("psi_size_min" in r for r in got)
    assert refused(manifest('size_release = "rounded"\nsize_rounding = 50'), "tax",
                   {"psi_size_release": "rounded"}) == []  # coarser is stricter: fine
    # the ledger records a size only where the owner allows it
    (r,) = refused(manifest('size_release = "exact"\nsize_on_ledger = true'), "hrss",
                   {"psi_size_release": "exact"})
    assert "psi_size_ledger" in r
    assert refused(manifest('size_release = "exact"\nsize_on_ledger = true'), "hrss",
                   {"psi_size_release": "exact", "psi_size_ledger": True}) == []


def test_only_the_owners_decide_who_receives_aligned_ids() -> None:
    m = manifest(recipients='["requester", "tax"]')
    # civil affairs (whose applicants tax would learn) and hrss (whose overlap tax would learn) refuse
    for node in ("civil", "hrss"):
        (r,) = refused(m, node)
        assert "psi_id_recipients" in r and "'tax'" in r and "datasets.d.disclosure" in r
    assert refused(m, "tax") == []  # tax receiving its own result needs no one else's ok from tax
    assert refused(m, "civil", {"psi_id_recipients": ["tax"]}) == []
    assert refused(m, "hrss", {"psi_id_recipients": ["*"]}) == []
    # a recipients list may narrow what the policy allows
    assert refused(manifest(recipients='["requester"]'), "civil", {"psi_id_recipients": ["*"]}) == []


def test_a_host_named_to_receive_the_cardinality_size_needs_the_owners_consent_too() -> None:
    m = manifest('mode = "cardinality"\nsize_release = "exact"', recipients='["requester", "hrss"]')
    got = refused(m, "civil", {"psi_size_release": "exact"})
    assert len(got) == 1 and "psi_id_recipients" in got[0] and "intersection size" in got[0], got
    assert refused(m, "civil", {"psi_size_release": "exact", "psi_id_recipients": ["hrss"]}) == []
