"""Jobs, a job's page, its result, and the analyst's submit form.

Everything is read or done through the SDK, as the CLI does it:
``Client.list`` (``fedgov job list``), ``Client.status`` (``fedgov job status``;
its manifest text is what the coordinator lets this person read),
``Client.result`` (``fedgov job result``: sealed results opened with this
kit's per-job key) and ``Client.submit`` (``fedgov job submit``: validated,
made single-use, signed with this kit's key). A running job's page reloads
itself (``<meta http-equiv="refresh">``: no script).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.datastructures import UploadFile
from starlette.responses import Response

from fedgov.client import TERMINAL
from fedgov.console import svg
from fedgov.console.pages import NavEntry, Page, PageContext, route
from fedgov.errors import FedgovError
from fedgov.manifest import parse_manifest
from fedgov.protocols.he_stats import TOTAL, dp_error

READERS = frozenset({"analyst", "auditor", "admin"})
SUBMITTERS = frozenset({"analyst", "admin"})
#: the steps each kind runs after the departments' approvals (graph labels are message keys)
KIND_STEPS: dict[str, tuple[str, ...]] = {
    "vertical-lr": ("step.psi", "step.training", "step.evaluation"),
    "vertical-lr-score": ("step.psi", "step.scoring"),
    "psi": ("step.psi",),
    "cohort-count": ("step.count",),
    "he-stats": ("step.cohort", "step.he", "step.release"),
    "eligibility": ("step.psi", "step.check"),
    "horizontal-fl": ("step.training", "step.evaluation"),
}
MAX_MANIFEST_BYTES = 256 * 1024


def job_steps(kind: str, state: str, t: Any, participants: Any) -> list[tuple[str, str]]:
    """The job's graph: approvals, the kind's steps, the result; each with done|active|bad|todo."""
    labels = [t("step.approval"), *[t(k) for k in KIND_STEPS.get(kind, ("step.compute",))], t("step.result")]
    refused = any(p.decision == "rejected" for p in participants)
    if state == "succeeded":
        return [(lab, "done") for lab in labels]
    if state == "submitted":
        return [(labels[0], "active"), *[(lab, "todo") for lab in labels[1:]]]
    if state == "rejected" or refused:
        return [(labels[0], "bad"), *[(lab, "todo") for lab in labels[1:]]]
    if state == "running":
        done = sum(1 for p in participants if p.task_state == "succeeded")
        mid = labels[1:-1]
        return [(labels[0], "done"), *[(lab, "active") for lab in mid], (labels[-1], "todo")] if not done else [
            (labels[0], "done"), *[(lab, "active") for lab in mid], (labels[-1], "active")]
    # failed / cancelled: the computation did not finish
    return [(labels[0], "done"), *[(lab, "bad") for lab in labels[1:-1]], (labels[-1], "todo")]


def jobs(ctx: PageContext) -> Response:
    rows = sorted(ctx.client.list(ctx.request.query_params.get("state") or None),
                  key=lambda j: -j.created_at)
    return ctx.render("jobs.html", jobs=rows, can_submit=ctx.identity.role in SUBMITTERS)


#: events the coordinator records (fedgov.client.EVENT_TEXT); each has a message ``ev.<event>`` here
EVENTS = ("job-submitted", "job-running", "job-succeeded", "job-failed", "job-rejected", "job-cancelled",
          "node-received", "node-approved", "node-rejected", "task-started", "task-succeeded", "task-failed")


def event_line(ev: Any, t: Any) -> str:
    """One timeline line for a :class:`fedgov.client.JobEvent` in the page's language (the SDK's English
    :attr:`~fedgov.client.JobEvent.text` for an event this console does not know)."""
    if ev.event not in EVENTS:
        return str(ev.text)
    return t(f"ev.{ev.event}", node=ev.node or "?") + (f": {ev.detail}" if ev.detail else "")


def _timeline(st: Any, t: Any) -> list[tuple[float | None, str, str]]:
    """The job's timeline: the coordinator's recorded events with their times (``Client.status``), or,
    from a coordinator that records none, what the status says (times of submission and last change only)."""
    if st.events:
        return [(e.ts, e.event, event_line(e, t)) for e in st.events]
    return [(ts, "", what) for ts, what in _status_timeline(st)]


def _status_timeline(st: Any) -> list[tuple[float | None, str]]:
    items: list[tuple[float | None, str]] = [(st.created_at, f"submitted by {st.requester}")]
    for p in st.participants:
        if p.decision != "pending":
            who = f" ({', '.join(p.approvers)})" if p.approvers else ""
            items.append((None, f"{p.node}: {p.decision}{who}" + (f": {p.reason}" if p.reason else "")))
        if p.task_state not in ("waiting", ""):
            items.append((None, f"{p.node}: task {p.task_state}"))
    items.append((st.updated_at, f"{st.state}" + (f": {st.reason}" if st.reason else "")))
    return items


def job(ctx: PageContext) -> Response:
    job_id = ctx.request.path_params["job_id"]
    st = ctx.client.status(job_id)
    manifest = None
    if st.manifest:
        try:
            manifest = parse_manifest(st.manifest, job_id)
        except FedgovError:
            manifest = None
    graph = svg.steps_graph(job_steps(st.kind, st.state, ctx.t, st.participants))
    refusals = [(p.node, p.reason) for p in st.participants if p.decision == "rejected"]
    return ctx.render(
        "job.html", job=st, manifest=manifest, manifest_text=st.manifest, graph=graph,
        refusals=refusals, timeline=_timeline(st, ctx.t), live=st.state not in TERMINAL,
        can_read_result=st.state == "succeeded" and (st.requester == ctx.identity.name
                                                      or ctx.identity.role == "admin"),
    )


def _contributions(ev: dict[str, Any]) -> list[tuple[str, float]]:
    from fedgov.ledger.entries import parse_coalition_key
    from fedgov.ledger.points import shapley_values

    co = ev.get("coalitions")
    if not isinstance(co, dict) or not co:
        return []
    coalitions = {parse_coalition_key(k): float(v) for k, v in co.items()}
    members = sorted(set().union(*coalitions))
    phi = shapley_values(members, coalitions)
    return sorted(((d, float(v)) for d, v in phi.items()), key=lambda kv: (-kv[1], kv[0]))


def result(ctx: PageContext) -> Response:
    job_id = ctx.request.path_params["job_id"]
    st = ctx.client.status(job_id)
    res = ctx.client.result(job_id)
    views: list[dict[str, Any]] = []
    for node, value in sorted(res.items()):
        view: dict[str, Any] = {"node": node, "value": value}
        if isinstance(value, dict) and isinstance(value.get("eval"), dict):
            ev = value["eval"]
            co = ev.get("coalitions") if isinstance(ev.get("coalitions"), dict) else {}
            baseline = co.get("") if co else None
            view["eval"] = ev
            view["baseline_auc"] = baseline
            view["roc_svg"] = svg.roc_curve(ev.get("roc") or [], label=ctx.t("res.joint_model"), auc=ev.get("auc"),
                                            baseline_auc=baseline, baseline_label=ctx.t("res.guest_alone", node=node))
            contrib = _contributions(ev)
            view["contributions"] = contrib
            view["contrib_svg"] = svg.bars(contrib) if contrib else ""
        if isinstance(value, dict) and isinstance(value.get("cells"), dict):
            stats = sorted({k for c in value["cells"].values() if isinstance(c, dict) for k in c})
            errors = dp_error(value)  # the release's own noise parameters -> each figure's noise sd
            rows = sorted(value["cells"].items())
            if isinstance(value.get("total"), dict):
                rows.append((TOTAL, value["total"]))
            view["cells"] = [(ctx.t("res.total") if label == TOTAL else label,
                              [(st, _figure(cell.get(st, "") if isinstance(cell, dict) else ""),
                                _sd_text(errors.get(label, {}).get(st))) for st in stats])
                             for label, cell in rows]
            view["has_error"] = bool(errors)
            view["suppressed"] = sorted((value.get("suppressed") or {}).items())
            view["stats"] = stats
        if isinstance(value, dict) and isinstance(value.get("counts"), dict):
            view["counts"] = sorted(value["counts"].items())
        views.append(view)
    return ctx.render("result.html", job=st, views=views, raw=json.dumps(res, indent=2, sort_keys=True,
                                                                         ensure_ascii=False))


def _figure(v: Any) -> str:
    if isinstance(v, list):
        return ", ".join(str(x) for x in v)
    return "" if v is None else str(v)


def _sd_text(sd: Any) -> str:
    """``± σ`` to three significant figures ("" when there is none); a histogram's σ is the same per bin."""
    if isinstance(sd, list):
        sd = sd[0] if sd else None
    if not isinstance(sd, (int, float)):
        return ""
    return "± " + f"{float(sd):.3g}"


def result_download(ctx: PageContext) -> Response:
    """The released result as JSON (what ``fedgov job result`` prints for this person)."""
    job_id = ctx.request.path_params["job_id"]
    res = ctx.client.result(job_id)
    body = json.dumps(res, indent=2, sort_keys=True, ensure_ascii=False)
    safe = "".join(c for c in job_id if c.isalnum() or c in "-_") or "job"
    return Response(body, media_type="application/json",
                    headers={"content-disposition": f'attachment; filename="{safe}-result.json"'})


def submit_form(ctx: PageContext) -> Response:
    return ctx.render("submit.html", text="", error=None)



def submit(ctx: PageContext) -> Response:
    text = str(ctx.form.get("manifest") or "")
    upload = ctx.form.get("file")
    if isinstance(upload, UploadFile) and upload.filename:
        data = upload.file.read(MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:
            return ctx.render("submit.html", text="", error=ctx.t("submit.too_big"), status_code=400)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return ctx.render("submit.html", text="", error=ctx.t("submit.not_utf8"), status_code=400)
    if not text.strip():
        return ctx.render("submit.html", text="", error=ctx.t("submit.empty"), status_code=400)
    try:
        st = ctx.client.submit(text, where="manifest")
    except FedgovError as exc:
        return ctx.render("submit.html", text=text, error=str(exc), status_code=400)
    return ctx.redirect(f"/jobs/{st.job_id}")


PAGE = Page(
    routes=[
        route("/jobs", jobs, READERS),
        route("/jobs/{job_id}", job, READERS),
        route("/jobs/{job_id}/result", result, READERS),
        route("/jobs/{job_id}/result.json", result_download, READERS),
        route("/submit", submit_form, SUBMITTERS),
        route("/submit", submit, SUBMITTERS, methods=["POST"]),
    ],
    nav=[NavEntry("/jobs", "nav.jobs", READERS, order=20), NavEntry("/submit", "nav.submit", SUBMITTERS, order=25)],
    messages={
        "en": {
            "nav.jobs": "Jobs", "nav.submit": "Submit a job",
            "jobs.title": "Jobs", "jobs.none": "No jobs yet.", "jobs.job": "Job", "jobs.kind": "Kind",
            "jobs.purpose": "Purpose", "jobs.requester": "Requester", "jobs.state": "State",
            "jobs.departments": "Each department", "jobs.created": "Submitted", "jobs.reason": "Reason",
            "job.title": "Job {id}", "job.live": "This page refreshes itself while the job runs.",
            "job.steps": "Steps", "job.manifest": "Manifest", "job.parameters": "Parameters",
            "job.participants": "Participants", "job.node": "Department", "job.role": "Role",
            "job.dataset": "Dataset", "job.fields": "Fields", "job.where": "Filter", "job.decision": "Decision",
            "job.task": "Task", "job.approvers": "Approvers", "job.timeline": "Timeline",
            "job.refusals": "Refusal reasons", "job.result": "Open the result", "job.no_manifest":
            "The coordinator did not return the manifest text.", "job.description": "Description",
            "job.recipients": "Result recipients",
            "step.approval": "Approvals", "step.psi": "PSI alignment", "step.training": "Training",
            "step.evaluation": "Evaluation", "step.scoring": "Scoring", "step.count": "Count",
            "step.cohort": "Cohort", "step.he": "HE statistics", "step.release": "Release",
            "step.check": "Eligibility check", "step.compute": "Computation", "step.result": "Result",
            "res.title": "Result of {id}", "res.joint_model": "joint model",
            "res.guest_alone": "{node}'s own features alone",
            "res.metrics": "Evaluation on held-out rows", "res.rows": "rows", "res.contrib":
            "Each department's contribution (exact Shapley value of AUC)",
            "res.baseline_note": "The dashed figure is the same model scored with {node}'s own features only.",
            "res.cells": "Statistics", "res.cell": "Cell", "res.suppressed": "suppressed",
            "res.suppressed_cells": "Suppressed cells", "res.dp": "Differential privacy: ε spent {eps}, noise {noise}; "
            "every released figure carries this noise (cells below {mc} are suppressed).",
            "res.total": "Total (all cells)",
            "res.dp_error": "± is the standard deviation of the differential-privacy noise in that figure "
            "(from the ε and clip bound the department used; for a mean, to first order; a histogram's is per "
            "bin). Laplace noise stays within twice its standard deviation about 94% of the time.",
            "res.counts": "Counts", "res.download": "Download the released result (JSON)",
            "res.raw": "Released result as received (opened with this kit's per-job key)",
            "res.none": "No department released a result to you.",
            "submit.title": "Submit a job", "submit.help": "Paste a manifest (TOML) or upload a file. "
            "It is checked here, made single-use and signed with your kit's key before it is sent, "
            "as `fedgov job submit` does.", "submit.manifest": "Manifest (TOML)", "submit.file": "or a file",
            "submit.send": "Sign and submit", "submit.empty": "Give a manifest: paste it or choose a file.",
            "submit.too_big": "That file is larger than 256 KiB; a manifest is a short TOML file.",
            "submit.not_utf8": "That file is not UTF-8 text.",
            "job.timeline_clock": "Times are the coordinator's, in UTC.",
            "ev.job-submitted": "Job submitted", "ev.job-running": "All departments approved: job running",
            "ev.job-succeeded": "Job succeeded", "ev.job-failed": "Job failed", "ev.job-rejected": "Job refused",
            "ev.job-cancelled": "Job cancelled", "ev.node-received": "{node} received the job for its policy check",
            "ev.node-approved": "{node} approved", "ev.node-rejected": "{node} refused",
            "ev.task-started": "{node} started its part", "ev.task-succeeded": "{node} finished its part",
            "ev.task-failed": "{node} failed",
        },
        "zh": {
            "nav.jobs": "任务", "nav.submit": "提交任务",
            "jobs.title": "任务", "jobs.none": "暂无任务。", "jobs.job": "任务", "jobs.kind": "类型",
            "jobs.purpose": "用途", "jobs.requester": "申请人", "jobs.state": "状态",
            "jobs.departments": "各部门状态", "jobs.created": "提交时间", "jobs.reason": "原因",
            "job.title": "任务 {id}", "job.live": "任务运行期间本页会自动刷新。",
            "job.steps": "步骤", "job.manifest": "任务清单", "job.parameters": "参数",
            "job.participants": "参与方", "job.node": "部门", "job.role": "角色",
            "job.dataset": "数据集", "job.fields": "字段", "job.where": "筛选条件", "job.decision": "决定",
            "job.task": "计算任务", "job.approvers": "审批人", "job.timeline": "时间线",
            "job.refusals": "拒绝原因", "job.result": "查看结果", "job.no_manifest": "协调方未返回任务清单原文。",
            "job.description": "说明", "job.recipients": "结果接收方",
            "step.approval": "审批", "step.psi": "隐私求交对齐", "step.training": "训练",
            "step.evaluation": "评估", "step.scoring": "打分", "step.count": "计数",
            "step.cohort": "样本群", "step.he": "同态统计", "step.release": "发布",
            "step.check": "资格核验", "step.compute": "计算", "step.result": "结果",
            "res.title": "{id} 的结果", "res.joint_model": "联合模型", "res.guest_alone": "仅用{node}自有特征",
            "res.metrics": "留出样本上的评估", "res.rows": "行", "res.contrib": "各部门贡献（AUC 的精确 Shapley 值）",
            "res.baseline_note": "虚线数值为同一模型仅使用{node}自有特征时的得分。",
            "res.cells": "统计结果", "res.cell": "单元格", "res.suppressed": "已抑制",
            "res.suppressed_cells": "被抑制的单元格", "res.dp": "差分隐私：已消耗 ε {eps}，噪声 {noise}；"
            "所有发布的数值都含此噪声（小于 {mc} 的单元格被抑制）。",
            "res.total": "合计（全部单元格）",
            "res.dp_error": "± 为该数值所含差分隐私噪声的标准差（由部门实际使用的 ε 和截断上界算出；均值为一阶近似；"
            "直方图为每个分箱的值）。拉普拉斯噪声约 94% 的情况下不超过其标准差的两倍。",
            "res.counts": "计数", "res.download": "下载已发布的结果（JSON）",
            "res.raw": "收到的已发布结果（用本密钥包的单任务密钥解封）",
            "res.none": "没有部门向您发布结果。",
            "submit.title": "提交任务", "submit.help": "粘贴任务清单（TOML）或上传文件。发送前会在本地校验、"
            "设为一次性并用您密钥包中的私钥签名，与 `fedgov job submit` 相同。", "submit.manifest": "任务清单（TOML）",
            "submit.file": "或选择文件", "submit.send": "签名并提交", "submit.empty": "请提供任务清单：粘贴或选择文件。",
            "submit.too_big": "文件超过 256 KiB；任务清单应是简短的 TOML 文件。",
            "submit.not_utf8": "该文件不是 UTF-8 文本。",
            "job.timeline_clock": "时间为协调方时钟（UTC）。",
            "ev.job-submitted": "任务已提交", "ev.job-running": "各部门均已批准：任务运行中",
            "ev.job-succeeded": "任务成功", "ev.job-failed": "任务失败", "ev.job-rejected": "任务被拒绝",
            "ev.job-cancelled": "任务已取消", "ev.node-received": "{node} 已收到任务并进行策略检查",
            "ev.node-approved": "{node} 已批准", "ev.node-rejected": "{node} 已拒绝",
            "ev.task-started": "{node} 开始执行其部分", "ev.task-succeeded": "{node} 已完成其部分",
            "ev.task-failed": "{node} 执行失败",
        },
    },
)
