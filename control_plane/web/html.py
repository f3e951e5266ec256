"""Server-rendered HTML: escaping by default, the page layout, and small building blocks.

Every value goes through ``esc`` unless it is ``Markup`` (HTML built here from escaped parts).
No inline scripts or styles anywhere: the Content-Security-Policy forbids them.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Iterable, Sequence


class Markup(str):
    """HTML that is already safe (built from escaped parts); ``+`` escapes plain strings."""

    def __add__(self, other: object) -> Markup:
        return Markup(str.__add__(self, esc(other)))

    def __radd__(self, other: object) -> Markup:
        return Markup(str.__add__(esc(other), self))


def esc(value: object) -> Markup:
    if isinstance(value, Markup):
        return value
    return Markup(html.escape("" if value is None else str(value), quote=True))


def join(parts: Iterable[object]) -> Markup:
    return Markup("".join(esc(p) for p in parts))


def tag(name: str, /, *children: object, **attrs: object) -> Markup:
    """``<name attrs>children</name>``; ``class_`` → ``class``; None/False attrs dropped."""
    rendered = []
    for key, value in attrs.items():
        if value is None or value is False:
            continue
        key = key.rstrip("_").replace("_", "-")
        rendered.append(f" {key}" if value is True else f' {key}="{esc(value)}"')
    return Markup(f"<{name}{''.join(rendered)}>{join(children)}</{name}>")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], **attrs: object) -> Markup:
    head = tag("thead", tag("tr", *(tag("th", h) for h in headers)))
    body = tag("tbody", *(tag("tr", *(tag("td", cell) for cell in row)) for row in rows))
    return tag("table", head, body, **attrs)


def when(at: dt.datetime | None) -> Markup:
    if at is None:
        return Markup("—")
    text = at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    return tag("time", text, datetime=at.isoformat())


def age(at: dt.datetime | None, now: dt.datetime) -> str:
    if at is None:
        return "never"
    return span_text((now - at).total_seconds()) + " ago"


def span_text(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.0f}d"


def badge(text: str, kind: str = "") -> Markup:
    return tag("span", text, class_=f"badge {kind or text.lower()}")


def csrf_field(csrf: str) -> Markup:
    return tag("input", type="hidden", name="csrf", value=csrf)


def form(action: str, csrf: str, *fields: object, button: str, danger: bool = False) -> Markup:
    submit = tag("button", button, type="submit", class_="danger" if danger else None)
    return tag("form", csrf_field(csrf), *fields, submit, method="post", action=action)


def reason_input(required: bool = False) -> Markup:
    return tag(
        "input",
        type="text",
        name="reason",
        placeholder="reason" + ("" if required else " (optional)"),
        maxlength="1000",
        required=required,
    )


NAV = (("/runs", "Runs"), ("/fleet", "Fleet"), ("/audit", "Audit"))


def layout(title: str, body: Markup, *, who: str = "", csrf: str = "", active: str = "") -> str:
    nav = join(
        tag("a", label, href=href, class_="active" if href == active else None)
        for href, label in NAV
    )
    logout = (
        tag("span", who, class_="who") + form("/logout", csrf, button="Log out")
        if csrf
        else Markup("")
    )
    header = tag(
        "header", tag("a", "Meridian", href="/runs", class_="brand"), tag("nav", nav), logout
    )
    return Markup("<!doctype html>") + tag(
        "html",
        tag(
            "head",
            Markup('<meta charset="utf-8">'),
            Markup('<meta name="viewport" content="width=device-width, initial-scale=1">'),
            tag("title", f"{title} · Meridian"),
            Markup('<link rel="stylesheet" href="/static/console.css">'),
            Markup('<script src="/static/console.js" defer></script>'),
        ),
        tag("body", header, tag("main", body)),
        lang="en",
    )
