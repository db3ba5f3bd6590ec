"""Federation page: nodes (online, last contact, certificate expiry) and the catalogue (metadata only).

Reads :func:`fedgov.opsview.federation_status` (what ``fedgov status`` prints)
and :meth:`fedgov.client.Client.nodes` (what ``fedgov catalog`` prints): schemas,
row counts, the nodes' public quality scores and the purposes (with job kinds)
each dataset's policy allows, as the node published them; never a row.
"""

from __future__ import annotations

from starlette.responses import Response

from fedgov.console.pages import PEOPLE, NavEntry, Page, PageContext, route
from fedgov.opsview import federation_status


def federation(ctx: PageContext) -> Response:
    status = federation_status(ctx.client)
    catalogue = ctx.client.nodes()
    return ctx.render("federation.html", status=status, catalogue=sorted(catalogue, key=lambda n: n["name"]))


PAGE = Page(
    routes=[route("/federation", federation, PEOPLE)],
    nav=[NavEntry("/federation", "nav.federation", PEOPLE, order=10)],
    messages={
        "en": {
            "nav.federation": "Federation",
            "fed.title": "Federation",
            "fed.nodes": "Nodes",
            "fed.node": "Node",
            "fed.state": "State",
            "fed.online": "online",
            "fed.offline": "offline",
            "fed.last_contact": "Last contact",
            "fed.ago": "{s} s ago",
            "fed.cert": "Certificate valid until",
            "fed.datasets": "Datasets",
            "fed.catalogue": "Catalogue",
            "fed.catalogue_note": "Metadata only: schemas, row counts, public quality scores and the purposes "
                                  "each policy allows. "
                                  "No record ever leaves a department through the catalogue.",
            "fed.dataset": "Dataset",
            "fed.rows": "Rows",
            "fed.fields": "Fields",
            "fed.field": "Field",
            "fed.type": "Type",
            "fed.description": "Description",
            "fed.quality": "Quality scores",
            "fed.no_quality": "no quality scores published",
            "fed.purposes": "Purposes its policy allows (job kinds)",
            "fed.no_purposes": "none published: the department's policy allows no job on it",
            "fed.purposes_note": "The purposes are the department's published policy, not data: a job must also "
                                 "be covered field by field and by an allowed requester, and the department's "
                                 "node checks it again when the job arrives (a refusal names the rule).",
            "fed.ledger": "Ledger: {size} entries, head signed {at}",
            "fed.jobs": "Jobs by state",
        },
        "zh": {
            "nav.federation": "联邦",
            "fed.title": "联邦概况",
            "fed.nodes": "节点",
            "fed.node": "节点",
            "fed.state": "状态",
            "fed.online": "在线",
            "fed.offline": "离线",
            "fed.last_contact": "最近联系",
            "fed.ago": "{s} 秒前",
            "fed.cert": "证书有效期至",
            "fed.datasets": "数据集",
            "fed.catalogue": "数据目录",
            "fed.catalogue_note": "仅含元数据：数据结构、行数、公开的数据质量评分和各策略允许的用途。任何记录都不会通过目录离开部门。",
            "fed.dataset": "数据集",
            "fed.rows": "行数",
            "fed.fields": "字段",
            "fed.field": "字段",
            "fed.type": "类型",
            "fed.description": "说明",
            "fed.quality": "质量评分",
            "fed.no_quality": "未发布质量评分",
            "fed.purposes": "策略允许的用途（任务类型）",
            "fed.no_purposes": "未发布：部门策略不允许在其上运行任务",
            "fed.purposes_note": "用途是部门公开的策略，而非数据：任务还须逐字段符合规则、申请人须被允许，"
                                 "且任务到达时部门节点会再次检查（拒绝时会写明依据的规则）。",
            "fed.ledger": "账本：{size} 条记录，最新树头签名于 {at}",
            "fed.jobs": "按状态统计的任务",
        },
    },
)
