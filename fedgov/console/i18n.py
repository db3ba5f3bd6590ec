"""Interface text of the console in English and Simplified Chinese.

:data:`MESSAGES` holds the base catalogue; each page module adds its own
strings through ``Page(messages=...)`` (merged by :func:`merge`). A key
missing in one language falls back to English, then to the key itself, so
a page never fails to render over a missing string (tests/test_console.py
checks that both languages have every key).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

LANGS: tuple[str, ...] = ("en", "zh")
DEFAULT_LANG = "en"

MESSAGES: dict[str, dict[str, str]] = {
    "en": {
        "app.title": "fedgov console",
        "app.tagline": "Usable but invisible: data never leaves its department",
        "nav.signed_in_as": "Signed in as {name} ({role})",
        "nav.department": "department {dept}",
        "nav.language": "Language",
        "role.analyst": "analyst",
        "role.approver": "approver",
        "role.auditor": "auditor",
        "role.admin": "admin",
        "role.node": "node",
        "role.coordinator": "coordinator",
        "home.title": "Welcome",
        "home.pages": "Pages open to your role:",
        "home.none": "Your role has no pages in this console.",
        "err.title": "Error",
        "err.forbidden.title": "Not allowed",
        "err.forbidden.role": "Your certificate's role ({role}) may not open this page; it is for: {roles}.",
        "err.csrf.title": "Form refused",
        "err.csrf.body": "This form was refused: it did not carry this session's form token (CSRF protection). "
                         "Go back, reload the page and submit it again.",
        "err.origin.body": "This form was refused: it was posted from another site ({origin}).",
        "err.auth.title": "Sign in with the console's link",
        "err.auth.body": "Open the URL that `fedgov console` printed (it carries a one-time token). "
                         "Each link works once; restart the console for a new one.",
        "err.auth.used": "This sign-in link was already used or is wrong. Restart `fedgov console` for a new one.",
        "err.host.body": "The console answers only on 127.0.0.1 / localhost.",
        "err.notfound": "No such page.",
        "err.internal": "Something went wrong inside the console. The details are not shown here: they are in the console's own log (the terminal that runs `fedgov console`).",
        "err.upstream": "The request failed: {error}",
        "common.back": "Back",
        "common.none": "none",
        "common.yes": "yes",
        "common.no": "no",
    },
    "zh": {
        "app.title": "fedgov 控制台",
        "app.tagline": "数据可用不可见：数据不出部门",
        "nav.signed_in_as": "当前身份：{name}（{role}）",
        "nav.department": "所属部门 {dept}",
        "nav.language": "语言",
        "role.analyst": "分析员",
        "role.approver": "审批人",
        "role.auditor": "审计员",
        "role.admin": "管理员",
        "role.node": "节点",
        "role.coordinator": "协调方",
        "home.title": "欢迎",
        "home.pages": "您的角色可访问的页面：",
        "home.none": "您的角色在本控制台中没有可访问的页面。",
        "err.title": "错误",
        "err.forbidden.title": "无权访问",
        "err.forbidden.role": "您证书中的角色（{role}）无权打开此页面；此页面仅供：{roles}。",
        "err.csrf.title": "表单被拒绝",
        "err.csrf.body": "此表单被拒绝：它没有携带本会话的表单令牌（CSRF 防护）。请返回、刷新页面后重新提交。",
        "err.origin.body": "此表单被拒绝：它来自其他站点（{origin}）。",
        "err.auth.title": "请使用控制台打印的链接登录",
        "err.auth.body": "请打开 `fedgov console` 打印的网址（其中带有一次性令牌）。每个链接只能使用一次；"
                         "如需新链接请重新启动控制台。",
        "err.auth.used": "此登录链接已被使用或不正确。请重新启动 `fedgov console` 获取新链接。",
        "err.host.body": "控制台只在 127.0.0.1 / localhost 上应答。",
        "err.notfound": "页面不存在。",
        "err.internal": "控制台内部出错。详细信息不在此显示，见运行 `fedgov console` 的终端日志。",
        "err.upstream": "请求失败：{error}",
        "common.back": "返回",
        "common.none": "无",
        "common.yes": "是",
        "common.no": "否",
    },
}


def merge(base: dict[str, dict[str, str]], extra: Mapping[str, Mapping[str, str]], where: str) -> None:
    """Add a page's strings to ``base``; a key defined twice with different text raises ValueError."""
    for lang, table in extra.items():
        if lang not in LANGS:
            raise ValueError(f"{where}: unknown language {lang!r} (known: {', '.join(LANGS)})")
        for key, text in table.items():
            old = base.setdefault(lang, {}).get(key)
            if old is not None and old != text:
                raise ValueError(f"{where}: message {key!r} ({lang}) is already defined differently")
            base[lang][key] = text


def pick_lang(value: str | None) -> str | None:
    """``value`` if it names a supported language (``zh``, ``zh-CN``, ``en``...), else None."""
    if not value:
        return None
    v = value.strip().lower().replace("_", "-")
    for lang in LANGS:
        if v == lang or v.startswith(lang + "-"):
            return lang
    return None


class Translator:
    """``t(key, **fields)`` for one language over a catalogue."""

    def __init__(self, catalogue: Mapping[str, Mapping[str, str]], lang: str) -> None:
        self.catalogue = catalogue
        self.lang = lang

    def __call__(self, key: str, **fields: Any) -> str:
        text = self.catalogue.get(self.lang, {}).get(key) or self.catalogue.get(DEFAULT_LANG, {}).get(key) or key
        if fields:
            try:
                return text.format(**fields)
            except (KeyError, IndexError, ValueError):
                return text
        return text
