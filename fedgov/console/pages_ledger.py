"""Ledger page (auditors): cosigned heads, entries with filters, proofs checked in the page, evidence bundles.

Everything goes through :class:`fedgov.auditor.LedgerClient` (what ``fedgov
ledger bundle`` uses): the log key is accepted only with the coordinator's
endorsement verified against this kit's CA; every head shown has its
signature checked and each one is proven an extension of the next older
(RFC 9162 consistency); every entry shown is proven a leaf of the latest
head (RFC 9162 inclusion) — an entry whose stored bytes were edited shows
as failed, by index. A job's page runs :func:`fedgov.ledger.bundle.check_bundle`
on the bundle it offers for download, the check ``fedgov ledger verify
--bundle`` repeats offline. Filtering uses the coordinator's index, which is
not evidence: what is shown is proven.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

from starlette.responses import Response

from fedgov.auditor import LedgerClient
from fedgov.console.pages import NavEntry, Page, PageContext, route
from fedgov.errors import ConfigError, FedgovError
from fedgov.ledger import bundle as B
from fedgov.ledger.entries import ENTRY_TYPES, EntryError, parse_entry
from fedgov.ledger.log import SignedTreeHead

AUDITORS = frozenset({"auditor", "admin"})
PAGE_SIZE = 50
HEADS_SHOWN = 8


def ledger_client(ctx: PageContext) -> LedgerClient:
    """This console's :class:`LedgerClient`, over the SDK client's mTLS channel (one per console)."""
    got = ctx.state.extra.get("ledger.client")
    if got is None:
        client = ctx.client
        got = LedgerClient.over(client._channel, client.material.ca)
        ctx.state.extra["ledger.client"] = got
    return got


def _day_ms(text: str, name: str, *, end: bool = False) -> int | None:
    if not text:
        return None
    try:
        d = date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{name}: expected a date YYYY-MM-DD, got {text!r}", where="ledger filter") from None
    ms = int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)
    return ms + 86_400_000 if end else ms


def _summary(data: bytes) -> dict[str, Any]:
    try:
        e = parse_entry(data)
    except EntryError as exc:
        return {"type": "?", "ts": None, "text": data.decode("utf-8", "replace")[:200], "invalid": str(exc)}
    rest = {k: v for k, v in e.fields.items() if k not in ("bundle",)}
    text = json.dumps(rest, sort_keys=True, ensure_ascii=False)
    return {"type": e.type, "ts": e.ts / 1000, "text": text if len(text) < 240 else text[:237] + "…",
            "signer": e.signer, "job": e.fields.get("job")}


def _heads(lc: LedgerClient, latest: SignedTreeHead) -> list[dict[str, Any]]:
    """The newest heads, each signature checked and each proven to extend the next older one."""
    heads = lc.heads_page(limit=HEADS_SHOWN)
    cos: dict[tuple[int, int], list[str]] = {}
    for w, sth, _ in lc.cosignatures(latest=True):
        cos.setdefault((sth.size, sth.timestamp), []).append(w)
    rows = []
    for k, h in enumerate(heads):
        signed = lc.check_head(h)
        ext = None
        if k + 1 < len(heads):
            ext = lc.prove_consistency(heads[k + 1], h)
        rows.append({"head": h, "signed": signed, "extends": ext, "older": heads[k + 1].size if ext else None,
                     "cosigners": sorted(cos.get((h.size, h.timestamp), []))})
    return rows


def ledger(ctx: PageContext) -> Response:
    q = ctx.request.query_params
    lc = ledger_client(ctx)
    latest = lc.head()
    filters = {
        "types": [q["type"]] if q.get("type") else [],
        "node": q.get("node") or None,
        "job": q.get("job") or None,
        "since_ms": _day_ms(q.get("since", ""), "since"),
        "until_ms": _day_ms(q.get("until", ""), "until", end=True),
    }
    before = int(q["before"]) if q.get("before", "").isdigit() else None
    page, nxt, _ = lc.query(**filters, before=before, limit=PAGE_SIZE)
    rows = []
    failed = []
    for i, data in page:
        if i >= latest.size:
            rows.append({"index": i, **_summary(data), "proved": None})
            continue
        proven_bytes, proved = lc.prove_entry(i, latest)
        # the bytes the filtered page listed must be the ones proven (the index cannot swap an entry)
        shown_bytes_ok = proved.ok and proven_bytes == data
        rows.append({"index": i, **_summary(data), "proved": shown_bytes_ok, "problem": proved.problem})
        if not shown_bytes_ok:
            failed.append(i)
    keep = {k: v for k, v in q.items() if k not in ("before", "lang") and v}
    return ctx.render(
        "ledger.html", latest=latest, heads=_heads(lc, latest), rows=rows, failed=failed, next=nxt,
        filters=keep, types=sorted(ENTRY_TYPES), key_hex=lc.key_statement["public_key"],
    )


def entry(ctx: PageContext) -> Response:
    lc = ledger_client(ctx)
    index = int(ctx.request.path_params["index"])
    latest = lc.head()
    if not 0 <= index < latest.size:
        raise FedgovError(f"no entry {index} under the latest signed head (size {latest.size})", where="ledger")
    data, proved = lc.prove_entry(index, latest)
    try:
        pretty = json.dumps(json.loads(data), indent=1, sort_keys=True, ensure_ascii=False)
    except ValueError:
        pretty = data.decode("utf-8", "replace")
    return ctx.render("ledger_entry.html", index=index, latest=latest, proved=proved, pretty=pretty,
                      summary=_summary(data))


def job(ctx: PageContext) -> Response:
    lc = ledger_client(ctx)
    job_id = ctx.request.path_params["job_id"]
    doc = lc.bundle(job_id)
    rep = lc.check_bundle(doc)
    ctx.state.extra.setdefault("ledger.bundles", {})[job_id] = doc
    entries = [{"index": e["index"], **_summary(e["data"].encode("utf-8"))} for e in doc["entries"]]
    return ctx.render("ledger_job.html", job_id=job_id, rep=rep, entries=entries, doc=doc)


def bundle_download(ctx: PageContext) -> Response:
    lc = ledger_client(ctx)
    job_id = ctx.request.path_params["job_id"]
    doc = ctx.state.extra.get("ledger.bundles", {}).get(job_id) or lc.bundle(job_id)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in job_id)
    return Response(B.dumps(doc), media_type="application/json",
                    headers={"content-disposition": f'attachment; filename="{safe}.bundle.json"'})


PAGE = Page(
    routes=[
        route("/ledger", ledger, AUDITORS),
        route("/ledger/entry/{index:int}", entry, AUDITORS),
        route("/ledger/job/{job_id}", job, AUDITORS),
        route("/ledger/job/{job_id}/bundle.json", bundle_download, AUDITORS),
    ],
    nav=[NavEntry("/ledger", "nav.ledger", AUDITORS, order=50)],
    messages={
        "en": {
            "nav.ledger": "Ledger",
            "led.title": "Contribution ledger",
            "led.key": "Log key (endorsed by the coordinator, checked against your federation CA)",
            "led.latest": "Latest signed head: {size} entries, signed {at}",
            "led.heads": "Signed tree heads",
            "led.heads_note": "Each head's signature is checked with the log key; each is proven (RFC 9162 "
                              "consistency proof) to extend the next older one.",
            "led.size": "Size", "led.root": "Root", "led.signed": "Signed", "led.sig": "Signature",
            "led.extends": "Extends older head", "led.cosigners": "Cosigned by (latest)",
            "led.ok": "verified", "led.failed": "FAILED", "led.unwitnessed": "not yet under the head",
            "led.entries": "Entries", "led.filter": "Filter", "led.type": "Type", "led.any": "any",
            "led.node": "Department", "led.job": "Job", "led.since": "From (date)", "led.until": "To (date)",
            "led.index": "#", "led.when": "Time", "led.fields": "Fields", "led.proof": "Inclusion proof",
            "led.older": "Older entries →", "led.none": "No entries match.",
            "led.entries_note": "Every entry listed is proven (RFC 9162 inclusion proof) to be a leaf of the latest "
                                "signed head; the filter uses the coordinator's index, the proofs do not trust it.",
            "led.tampered": "Ledger verification FAILED: entries {entries} do not match the signed tree.",
            "led.entry": "Entry {index}", "led.checks": "What was checked",
            "led.check": "Check", "led.subject": "On", "led.result": "Result",
            "led.job_title": "Evidence for job {job}",
            "led.bundle_ok": "Evidence bundle verified: {n} entries under head {size}, cosigned by {k} of {total} "
                             "departments ({who}).",
            "led.bundle_failed": "Evidence bundle FAILED:",
            "led.download": "Download the evidence bundle (JSON)",
            "led.download_note": "Check it offline: fedgov ledger verify --bundle FILE --ca ca.crt",
            "led.job_link": "evidence",
            "led.proof_hashes": "Proof hashes",
        },
        "zh": {
            "nav.ledger": "账本",
            "led.title": "贡献账本",
            "led.key": "日志公钥（由协调方背书，已用本联邦 CA 核验）",
            "led.latest": "最新签名树头：{size} 条记录，签名于 {at}",
            "led.heads": "已签名的树头",
            "led.heads_note": "每个树头的签名都用日志公钥核验；并用 RFC 9162 一致性证明核验其是前一个树头的延续。",
            "led.size": "大小", "led.root": "根哈希", "led.signed": "签名时间", "led.sig": "签名",
            "led.extends": "延续前一树头", "led.cosigners": "联署部门（最新）",
            "led.ok": "已核验", "led.failed": "核验失败", "led.unwitnessed": "尚未纳入树头",
            "led.entries": "记录", "led.filter": "筛选", "led.type": "类型", "led.any": "全部",
            "led.node": "部门", "led.job": "任务", "led.since": "起始日期", "led.until": "截止日期",
            "led.index": "序号", "led.when": "时间", "led.fields": "内容", "led.proof": "包含性证明",
            "led.older": "更早的记录 →", "led.none": "没有符合条件的记录。",
            "led.entries_note": "列出的每条记录都用 RFC 9162 包含性证明核验为最新签名树头的叶子；筛选使用协调方的索引，"
                                "证明不依赖该索引。",
            "led.tampered": "账本核验失败：记录 {entries} 与已签名的树不符。",
            "led.entry": "记录 {index}", "led.checks": "核验内容",
            "led.check": "核验项", "led.subject": "对象", "led.result": "结果",
            "led.job_title": "任务 {job} 的证据",
            "led.bundle_ok": "证据包核验通过：{n} 条记录位于树头 {size} 之下，由 {total} 个部门中的 {k} 个联署（{who}）。",
            "led.bundle_failed": "证据包核验失败：",
            "led.download": "下载证据包（JSON）",
            "led.download_note": "离线核验：fedgov ledger verify --bundle 文件 --ca ca.crt",
            "led.job_link": "证据",
            "led.proof_hashes": "证明哈希",
        },
    },
)
