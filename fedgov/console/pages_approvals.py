"""The approval inbox of a department's approvers: pending jobs, each job's full brief, approve / reject.

The console runs next to the approver's own kit and their department's node
(``fedgov console --kit APPROVER_KIT --node-config node.toml``), as
``fedgov node pending|show|approve|reject`` do: it reads the node's queue
locally (:func:`fedgov.node.approvals.pending`, :func:`~fedgov.node.approvals.show`
— the :class:`~fedgov.node.brief.Brief` the node built from the signed
manifest, its own policy and the protocol page) and records decisions with
:func:`~fedgov.node.approvals.decide`, which signs with the approver's key
from the kit and applies the node's rules first (an approver of this
department only; the requester may not approve; dual-control approvers are
distinct people). The running node verifies every signature again. Nothing
here opens a port at the department: the console listens on 127.0.0.1.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from fedgov.console.pages import NavEntry, Page, PageContext, route
from fedgov.errors import FedgovError

APPROVERS = frozenset({"approver"})


def _config(ctx: PageContext) -> Any:
    from fedgov.node.config import NodeConfig

    if ctx.state.node_config is None:
        return None
    cache = ctx.state.extra.setdefault("approvals", {})
    if "config" not in cache:
        cache["config"] = NodeConfig.load(ctx.state.node_config)
    return cache["config"]


def inbox(ctx: PageContext) -> Response:
    from fedgov.node import approvals

    config = _config(ctx)
    if config is None:
        return ctx.render("approvals.html", config=None, rows=[])
    return ctx.render("approvals.html", config=config, rows=approvals.pending(config))


def _brief_page(ctx: PageContext, job_id: str, *, error: str | None = None, done: str | None = None,
                status_code: int = 200) -> Response:
    from fedgov.node import approvals

    config = _config(ctx)
    if config is None:
        return ctx.render("approvals.html", config=None, rows=[])
    try:
        brief = approvals.show(config, job_id).to_dict()
    except FedgovError as exc:
        if done:  # decided and no longer pending: say so
            return ctx.render("approval.html", brief=None, job_id=job_id, error=None, done=done)
        raise exc from None
    me = ctx.identity
    return ctx.render("approval.html", brief=brief, job_id=job_id, error=error, done=done,
                      self_request=brief["requester"] == me.name, status_code=status_code)


def show(ctx: PageContext) -> Response:
    return _brief_page(ctx, ctx.request.path_params["job_id"])


def _record(config: Any, job_id: str, kit: Any, *, approve: bool, reason: str) -> str:
    """Record the decision exactly as ``fedgov node approve|reject`` does: signed here with the kit's key."""
    from fedgov.node import approvals

    return approvals.decide(config, job_id, kit, approve=approve, reason=reason)


def decide(ctx: PageContext) -> Response:
    job_id = ctx.request.path_params["job_id"]
    config = _config(ctx)
    if config is None or ctx.state.kit is None:
        return ctx.render("approvals.html", config=None, rows=[], status_code=400)
    decision = str(ctx.form.get("decision") or "")
    if decision not in ("approve", "reject"):
        return _brief_page(ctx, job_id, error=ctx.t("appr.choose"), status_code=400)
    reason = str(ctx.form.get("reason") or "").strip()
    try:
        msg = _record(config, job_id, ctx.state.kit, approve=decision == "approve", reason=reason)
    except FedgovError as exc:
        return _brief_page(ctx, job_id, error=str(exc), status_code=400)
    return _brief_page(ctx, job_id, done=msg)


PAGE = Page(
    routes=[
        route("/approvals", inbox, APPROVERS),
        route("/approvals/{job_id}", show, APPROVERS),
        route("/approvals/{job_id}", decide, APPROVERS, methods=["POST"]),
    ],
    nav=[NavEntry("/approvals", "nav.approvals", APPROVERS, order=30)],
    messages={
        "en": {
            "nav.approvals": "Approval inbox",
            "appr.title": "Approval inbox of {dept}", "appr.none": "No job awaits your department's approval.",
            "appr.no_config": "The approval inbox reads your department's node locally: start the console "
                              "with --node-config NODE.toml (next to your own kit).",
            "appr.count": "{n} of {required} approvals", "appr.open": "Review",
            "appr.job": "Job {id} at {node}", "appr.requested_by": "Requested by",
            "appr.you": "You are {name}", "appr.self": "You requested this job: the node will refuse your "
            "approval (requester and approver must be different people).",
            "appr.manifest": "Manifest", "appr.validity": "Valid", "appr.this_node": "This department's part",
            "appr.params": "Parameters beside this department's floor", "appr.param": "Parameter",
            "appr.value": "Value", "appr.source": "Set by", "appr.limit": "This department's floor / limit",
            "appr.floors": "This department's floors", "appr.policy": "Policy decision",
            "appr.allowed": "allowed", "appr.refused": "refused", "appr.needed": "{n} approver(s) needed",
            "appr.sends": "What leaves this node, and to whom", "appr.step": "Message", "appr.to": "To",
            "appr.size": "Size", "appr.when": "When", "appr.results": "Who receives which result",
            "appr.others": "Other participants", "appr.learns": "What each party learns",
            "appr.party": "Party", "appr.approvals": "Approvals so far", "appr.decide": "Your decision",
            "appr.reason": "Reason (recorded and signed; a rejection needs one)",
            "appr.approve": "Approve and sign", "appr.reject": "Reject and sign",
            "appr.signs": "Your decision is signed here with the key in your kit, over this job's manifest "
                          "and this brief, as `fedgov node approve` does.",
            "appr.choose": "Choose approve or reject.", "appr.back": "Back to the inbox",
            "appr.decided": "Decision recorded",
        },
        "zh": {
            "nav.approvals": "审批待办",
            "appr.title": "{dept} 的审批待办", "appr.none": "暂无待本部门审批的任务。",
            "appr.no_config": "审批待办在本地读取本部门节点：请用 --node-config NODE.toml 启动控制台（与您自己的密钥包在同一台机器上）。",
            "appr.count": "已批准 {n} / 需 {required}", "appr.open": "审阅",
            "appr.job": "{node} 的任务 {id}", "appr.requested_by": "申请人",
            "appr.you": "您是 {name}", "appr.self": "此任务由您申请：节点将拒绝您的批准（申请人与审批人必须是不同的人）。",
            "appr.manifest": "任务清单", "appr.validity": "有效期", "appr.this_node": "本部门参与的部分",
            "appr.params": "参数与本部门底线对照", "appr.param": "参数", "appr.value": "取值", "appr.source": "设定方",
            "appr.limit": "本部门底线 / 限制", "appr.floors": "本部门底线", "appr.policy": "策略判定",
            "appr.allowed": "允许", "appr.refused": "拒绝", "appr.needed": "需要 {n} 名审批人",
            "appr.sends": "离开本节点的内容及接收方", "appr.step": "消息", "appr.to": "接收方",
            "appr.size": "大小", "appr.when": "时机", "appr.results": "结果的接收方",
            "appr.others": "其他参与方", "appr.learns": "各方可获知的信息", "appr.party": "参与方",
            "appr.approvals": "目前的批准", "appr.decide": "您的决定",
            "appr.reason": "理由（将被记录并签名；拒绝时必填）",
            "appr.approve": "批准并签名", "appr.reject": "拒绝并签名",
            "appr.signs": "您的决定在本机用您密钥包中的私钥签名，签名覆盖本任务清单和本简报，与 `fedgov node approve` 相同。",
            "appr.choose": "请选择批准或拒绝。", "appr.back": "返回审批待办",
            "appr.decided": "决定已记录",
        },
    },
)
