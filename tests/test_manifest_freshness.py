"""Replay-proof manifests: nonce, validity window and result key in the signed text; the node's
rules that refuse a manifest without them, outside its window, or already taken by another job."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

import pytest

from fedgov.crypto.keys import ResultKey
from fedgov.errors import ConfigError
from fedgov.manifest import MAX_VALIDITY, check_fresh, parse_manifest, stamp_manifest
from fedgov.node.store import NodeStore

BODY = (
    '[job]\nkind = "cohort-count"\npurpose = "test-counting"\n\n'
    '[[participants]]\nnode = "alpha"\ndataset = "data"\nfields = ["y"]\n'
)
NOW = dt.datetime(2025, 6, 1, 8, 0, tzinfo=dt.UTC)
KEY = ResultKey("li").public_bytes


def test_stamp_adds_nonce_window_and_key_under_job_and_keeps_the_rest() -> None:
    text = stamp_manifest(BODY, result_key=KEY, now=NOW)
    head, _, rest = text.partition('result_key = "')
    assert text.startswith("[job]\nnonce = ")
    assert BODY.removeprefix("[job]\n") in text  # the analyst's lines, byte for byte
    m = parse_manifest(text)
    assert m.nonce is not None and len(m.nonce) == 32
    assert m.not_before == NOW - dt.timedelta(minutes=5)
    assert m.not_after == NOW + dt.timedelta(days=7)
    assert m.result_key == KEY
    check_fresh(m, NOW)
    # two stampings of the same text differ (fresh nonce): two different digests
    assert parse_manifest(stamp_manifest(BODY, result_key=KEY, now=NOW)).digest != m.digest
    # an explicit nonce / window is the analyst's and is kept; CRLF stays CRLF
    mine = BODY.replace("[job]\n", '[job]\nnonce = "my-own-nonce-0123456789"\n'
                        "not_before = 2025-06-01T00:00:00Z\nnot_after = 2025-06-02T00:00:00Z\n")
    m2 = parse_manifest(stamp_manifest(mine.replace("\n", "\r\n"), result_key=KEY, now=NOW))
    assert m2.nonce == "my-own-nonce-0123456789" and m2.not_after == dt.datetime(2025, 6, 2, tzinfo=dt.UTC)
    assert "\r\n" in m2.text and "\n" not in m2.text.replace("\r\n", "")


def test_stamp_refuses_what_it_cannot_make_safe() -> None:
    with pytest.raises(ConfigError, match="remove \\[job\\] result_key"):
        stamp_manifest(stamp_manifest(BODY, result_key=KEY), result_key=KEY)
    inline = 'job = { kind = "cohort-count", purpose = "test-counting" }\n' + BODY.split("\n\n", 1)[1]
    with pytest.raises(ConfigError, match=r"must start with a '\[job\]' line"):
        stamp_manifest(inline, result_key=KEY)
    with pytest.raises(ConfigError, match="at most 31 days"):
        stamp_manifest(BODY, result_key=KEY, valid_for=dt.timedelta(days=40))
    half = BODY.replace("[job]\n", "[job]\nnot_after = 2025-06-02T00:00:00Z\n")
    with pytest.raises(ConfigError, match="both not_before and not_after"):
        stamp_manifest(half, result_key=KEY)


@pytest.mark.parametrize(
    ("edit", "now", "message"),
    [
        (lambda t: t.replace(t.split("\n")[1] + "\n", ""), NOW, "has no nonce"),
        (lambda t: t, NOW + dt.timedelta(days=8), "expired at 2025-06-08T08:00:00"),
        (lambda t: t, NOW - dt.timedelta(hours=1), "not valid before"),
        (lambda t: "\n".join(x for x in t.split("\n") if not x.startswith("result_key")), NOW,
         "has no result_key"),
        (lambda t: t.replace("not_after = 2025-06-08T08:00:00Z", "not_after = 2025-08-01T00:00:00Z"), NOW,
         "exceeds 31 days"),
    ],
    ids=["no-nonce", "expired", "not-yet-valid", "no-result-key", "window-too-long"],
)
def test_node_rule_refuses_unfresh_manifests(edit, now: dt.datetime, message: str) -> None:
    text = edit(stamp_manifest(BODY, result_key=KEY, now=NOW))
    with pytest.raises(ConfigError, match=message):
        check_fresh(parse_manifest(text), now)


def test_window_edges_allow_clock_skew_only() -> None:
    m = parse_manifest(stamp_manifest(BODY, result_key=KEY, now=NOW))
    assert m.not_after - m.not_before <= MAX_VALIDITY
    check_fresh(m, m.not_after + dt.timedelta(minutes=4))  # within the 5-minute skew allowance
    with pytest.raises(ConfigError, match="expired"):
        check_fresh(m, m.not_after + dt.timedelta(minutes=6))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('nonce = "short"', "nonce must be 16-64"),
        ("not_before = 2025-06-01T08:00:00", "with a UTC offset"),
        ('result_key = "' + base64.b64encode(b"x" * 32).decode() + '"', "1216-byte"),
        ('result_key = "not base64!"', "1216-byte"),
    ],
)
def test_parse_refuses_malformed_freshness_keys(line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_manifest(BODY.replace("[job]\n", f"[job]\n{line}\n"))


def test_store_gives_a_manifest_to_one_job_and_runs_a_job_once(tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "state")
    later = (NOW + dt.timedelta(days=7)).timestamp() + 10**9  # far future: not pruned
    assert store.claim_manifest("d1", "job-a", "n1", later) == "job-a"
    assert store.claim_manifest("d1", "job-a", "n1", later) == "job-a"  # re-delivery of the same job
    assert store.claim_manifest("d1", "job-b", "n1", later) == "job-a"  # a replay names the owner
    assert store.claim_run("job-a") is True
    assert store.claim_run("job-a") is False
    store.close()
    store = NodeStore(tmp_path / "state")  # survives a restart
    assert store.claim_manifest("d1", "job-c", "n1", later) == "job-a"
    assert store.claim_run("job-a") is False
    # rows past their window (plus a day) are pruned: the window alone refuses those manifests
    assert store.claim_manifest("d2", "job-x", "n2", 1.0) == "job-x"
    assert store.claim_manifest("d3", "job-y", "n3", later) == "job-y"
    assert store.claim_manifest("d2", "job-z", "n2", 1.0) == "job-z"
    store.close()
