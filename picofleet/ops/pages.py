"""The dashboard's HTML: server-rendered pages and fragments, with inline CSS and JS.

Everything is in this module so the hub serves the dashboard with no static files and no
CDN (the Pi's LAN may have no internet). Every value from the database goes through
``escape``; the script inserts live data with ``textContent`` only, or swaps in fragments
rendered here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote

from picofleet.core.charts import GAP_FACTOR
from picofleet.core.rollout import ACTIONS, FLEET_KINDS
from picofleet.ops import svg
from picofleet.ops.queries import METRIC_VIEWS, SPARK_BUCKET_S, SPARK_HOURS

STATIC = "/static"  # picofleet/ops/static, served by routes.static_asset

CSS = """
:root{--fg:#1d2430;--muted:#667085;--bg:#f6f7f9;--card:#fff;--line:#e3e6ea;--accent:#2563eb;
--ok:#15803d;--bad:#b42318;--warn:#b54708;color-scheme:light dark}
@media (prefers-color-scheme:dark){:root{--fg:#e6e8eb;--muted:#98a2b3;--bg:#111418;
--card:#1a1f26;--line:#2b323c;--accent:#60a5fa;--ok:#4ade80;--bad:#f87171;--warn:#fbbf24}}
*{box-sizing:border-box}
body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--fg);background:var(--bg)}
header{display:flex;flex-wrap:wrap;gap:.5rem 1.2rem;align-items:center;padding:.6rem 1rem;
background:var(--card);border-bottom:1px solid var(--line);position:sticky;top:0;z-index:1}
header h1{font-size:1.05rem;margin:0}header a{color:var(--accent);text-decoration:none}
.counters{display:flex;flex-wrap:wrap;gap:.3rem 1rem;color:var(--muted)}
.counters b{color:var(--fg)}
#live{font-size:.8rem;color:var(--muted)}body[data-live=on] #live{color:var(--ok)}
main{padding:.8rem;max-width:1200px;margin:0 auto}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;
padding:.6rem .8rem;margin:0 0 .8rem}
h2{font-size:1rem;margin:.1rem 0 .5rem}h3{font-size:.9rem;margin:.5rem 0 .3rem}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid var(--line);
white-space:nowrap;vertical-align:top}
th{color:var(--muted);font-weight:600;font-size:.8rem}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.wrap{white-space:normal;min-width:12rem}
code,pre{font:12px/1.35 ui-monospace,SFMono-Regular,Menlo,monospace}
pre.payload{margin:0;max-width:28rem;max-height:6rem;overflow:auto;white-space:pre-wrap;
word-break:break-all;background:var(--bg);padding:.2rem .35rem;border-radius:4px}
.pill{display:inline-block;padding:0 .45rem;border-radius:999px;font-size:.75rem;
border:1px solid currentColor}
.online{color:var(--ok)}.offline{color:var(--muted)}.blocked{color:var(--bad)}
.code{color:var(--bad);font-weight:600}.muted{color:var(--muted)}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:.6rem}
svg.chart{width:100%;height:auto;color:var(--accent)}
svg.chart .series{stroke:currentColor;stroke-width:1.6}
svg.chart .dot{fill:currentColor}
svg.chart .grid{stroke:var(--line);stroke-width:1}
svg.chart text{fill:var(--muted);font-size:11px}
svg.chart .title{fill:var(--fg);font-size:12px;font-weight:600}
svg.chart .last{fill:var(--accent)}
svg.bar .track{fill:var(--line)}svg.bar rect{fill:var(--muted)}
svg.bar .seg-booted_ok{fill:var(--ok)}
svg.bar .seg-failed,svg.bar .seg-rolled_back,svg.bar .seg-timed_out{fill:var(--bad)}
svg.bar .seg-downloading,svg.bar .seg-verified,svg.bar .seg-applied,
svg.bar .seg-received{fill:var(--warn)}
.metrics{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:.6rem}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:.15rem .8rem;margin:0}
dl.kv dt{color:var(--muted)}dl.kv dd{margin:0}
svg.spark{color:var(--accent);vertical-align:middle}
svg.spark polyline{stroke:currentColor;stroke-width:1.5}
button{font:inherit;font-size:.85rem;padding:.2rem .6rem;border:1px solid var(--line);
border-radius:6px;background:var(--card);color:var(--fg);cursor:pointer}
button:disabled{opacity:.45;cursor:default}button.danger{color:var(--bad)}
.actions{display:flex;flex-wrap:wrap;gap:.4rem;align-items:center;margin:.3rem 0}
.result{font-size:.85rem;color:var(--muted);white-space:normal;word-break:break-word}
.ranges{display:flex;gap:.3rem .5rem;flex-wrap:wrap;align-items:center}
.ranges button[aria-pressed=true]{background:var(--accent);color:#fff;border-color:var(--accent)}
.chart-body{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,520px),1fr));
gap:.6rem;margin-top:.4rem}
.uchart h3{margin:.2rem 0}.uchart{min-width:0;overflow:hidden}
ul.markers{list-style:none;padding:0;margin:.3rem 0;font-size:.8rem;grid-column:1/-1}
.mk{display:inline-block;width:.6rem;height:.6rem;border-radius:50%;margin-right:.35rem}
.mk-reboot{background:#6b7280}.mk-install{background:#16a34a}.mk-alert{background:#dc2626}
.alerts h3 .n{color:var(--muted);font-weight:400}
@media (max-width:700px){
 main{padding:.4rem}
 table.stack thead{display:none}
 table.stack,table.stack tbody,table.stack tr,table.stack td{display:block;width:100%}
 table.stack tr{border-bottom:1px solid var(--line);padding:.35rem 0}
 table.stack td{border:0;padding:.1rem .2rem;white-space:normal;display:flex;gap:.6rem;
 justify-content:space-between;align-items:center}
 table.stack td[data-label]::before{content:attr(data-label);color:var(--muted);font-size:.8rem}
 table.stack tr.empty td::before{content:none}
 table.stack td:empty{display:none}
 #fleet tr{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));column-gap:1rem}
 #fleet td:first-child{grid-column:1/-1;font-weight:600;font-size:1rem}
 #fleet td:first-child::before,#fleet td[data-label=latest]::before{content:none}
 #fleet td[data-label=latest],#fleet td[data-label="24 h"]{grid-column:1/-1}
}
"""

# Live updates: EventSource on /api/events. Errors and deploy events are added as rows built
# with textContent; fleet rows and charts are re-fetched as server-rendered fragments.
JS = """
(() => {
  const body = document.body, scope = body.dataset.device || null;
  const $ = (s) => document.querySelector(s);
  const ago = (iso) => {
    const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
    if (!isFinite(s)) return '';
    if (s < 60) return Math.max(s, 0) + ' s ago';
    if (s < 3600) return Math.round(s / 60) + ' min ago';
    if (s < 86400) return Math.round(s / 3600) + ' h ago';
    return Math.round(s / 86400) + ' d ago';
  };
  const tick = () => document.querySelectorAll('time.ago').forEach((t) => {
    const iso = t.getAttribute('datetime');
    t.title = new Date(iso).toLocaleString() + ' (' + iso + ')';
    t.textContent = ago(iso);
  });
  const td = (text, cls) => {
    const c = document.createElement('td');
    if (cls) c.className = cls;
    c.textContent = text == null ? '' : String(text);
    return c;
  };
  const time = (iso) => {
    const c = document.createElement('td'), t = document.createElement('time');
    t.className = 'ago'; t.setAttribute('datetime', iso); t.textContent = ago(iso); t.title = iso;
    c.appendChild(t); return c;
  };
  const prepend = (sel, tr, max) => {
    const tb = $(sel); if (!tb) return;
    const empty = tb.querySelector('tr.empty'); if (empty) empty.remove();
    tb.insertBefore(tr, tb.firstChild);
    while (tb.rows.length > max) tb.deleteRow(tb.rows.length - 1);
  };
  const refresh = {};
  const reload = (sel, url) => {
    if (refresh[sel]) return;
    refresh[sel] = setTimeout(async () => {
      delete refresh[sel];
      const el = $(sel); if (!el) return;
      const r = await fetch(url, {cache: 'no-store'});
      if (r.ok) { el.innerHTML = await r.text(); tick(); }
    }, 400);
  };
  const es = new EventSource('/api/events?after=' + (body.dataset.after || 0));
  es.onopen = () => { body.dataset.live = 'on'; $('#live').textContent = 'live'; };
  es.onerror = () => { body.dataset.live = 'off'; $('#live').textContent = 'reconnecting'; };
  es.addEventListener('ingest_error', (m) => {
    const e = JSON.parse(m.data);
    if ((scope && e.device_key !== scope) || document.getElementById('err-' + e.id)) return;
    const tr = document.createElement('tr'); tr.id = 'err-' + e.id;
    tr.append(time(e.created_at), td(e.code, 'code'), td(e.device_key), td(e.topic),
              td(e.detail, 'wrap'));
    const c = document.createElement('td'), pre = document.createElement('pre');
    pre.className = 'payload'; pre.textContent = e.payload; c.appendChild(pre); tr.append(c);
    prepend('#errors tbody', tr, 50);
  });
  es.addEventListener('deploy', (m) => {
    const d = JSON.parse(m.data);
    if (scope && d.device_key !== scope) return;
    const tr = document.createElement('tr');
    tr.append(time(d.created_at), td(d.device_key), td(d.version), td(d.state),
              td(d.reason), td(d.source));
    prepend('#deploys tbody', tr, 50);
    if (!scope) reload('#rollouts-body', '/fragments/rollouts');  // wave progress, state
  });
  es.addEventListener('device', (m) => {
    const d = JSON.parse(m.data);
    if (scope) {
      if (d.device_key === scope) {
        reload('#charts', '/devices/' + encodeURIComponent(scope) + '/fragments/charts');
      }
    } else {
      reload('#fleet tbody', '/fragments/fleet');
    }
  });
  es.addEventListener('counters', (m) => {
    const c = JSON.parse(m.data);
    for (const k in c) {
      const el = document.querySelector('[data-counter="' + k + '"]');
      if (el) el.textContent = c[k];
    }
  });
  window.picofleetTick = tick;
  tick(); setInterval(tick, 5000);
})();
"""


def _iso(v: datetime | None) -> str:
    return v.isoformat() if v is not None else ""


def _time(v: datetime | None, *, relative: bool = False) -> str:
    if v is None:
        return '<span class="muted">never</span>'
    cls = ' class="ago"' if relative else ""
    utc = v.astimezone(UTC) if v.tzinfo else v
    # The exact time on hover; the script turns the text into "3 min ago" (class ago).
    return (
        f'<time{cls} datetime="{escape(_iso(v))}" title="{utc:%Y-%m-%d %H:%M:%S} UTC">'
        f"{utc:%Y-%m-%d %H:%M:%S}</time>"
    )


def _num(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.1f}"
    return escape(str(v))


def _dev_link(key: str | None) -> str:
    if not key:
        return '<span class="muted">-</span>'
    return f'<a href="/devices/{quote(key)}">{escape(key)}</a>'


def _table(
    table_id: str, headers: Sequence[str], rows: Iterable[str], empty: str, cols: int
) -> str:
    body = (
        "".join(rows) or f'<tr class="empty"><td colspan="{cols}" class="muted">{empty}</td></tr>'
    )
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return (
        f'<div class="scroll"><table id="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def layout(
    title: str, content: str, counters: dict[str, int], *, after: int, device: str | None = None
) -> str:
    """The page frame. ``after``: newest ingest error id when rendered, where live starts."""
    scope = f' data-device="{escape(device)}"' if device else ""
    scope += f' data-after="{int(after)}"'
    ctr = "".join(
        f'<span>{label} <b data-counter="{k}">{counters.get(k, 0)}</b></span>'
        for k, label in (
            ("online", "online"),
            ("devices", "devices"),
            ("messages", "messages"),
            ("errors_24h", "errors 24h"),
        )
    )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title>"
        f'<link rel="stylesheet" href="{STATIC}/uplot/uPlot.min.css"><style>{CSS}</style></head>'
        f'<body data-live="off"{scope}><header><h1><a href="/">picofleet</a></h1>'
        f'<div class="counters">{ctr}</div><span id="live">connecting</span>'
        '<a href="/docs">API</a><a href="/metrics">metrics</a>'
        '<button type="button" id="token">operator token</button></header>'
        f"<main>{content}</main><script>{JS}</script>"
        f'<script src="{STATIC}/uplot/uPlot.iife.min.js"></script>'
        f'<script src="{STATIC}/dash.js"></script></body></html>'
    )


# -- fleet ----------------------------------------------------------------------------------
Sparks = dict[str, tuple[str, list[tuple[datetime, float]]]]
FLEET_HEADERS = (
    "device",
    "type",
    "state",
    "last seen",
    "firmware",
    "channel",
    "latest",
    f"{SPARK_HOURS} h",
)


def _cells(values: Sequence[str]) -> str:
    """Cells labelled with their column, which a phone shows as stacked rows (table.stack)."""
    return "".join(
        f'<td data-label="{h}">{v}</td>' for h, v in zip(FLEET_HEADERS, values, strict=True)
    )


def fleet_rows(devices: Sequence[dict[str, Any]], sparks: Sparks | None = None) -> str:
    sparks = sparks or {}
    out = []
    for d in devices:
        if d["blocked"]:
            state = '<span class="pill blocked">blocked</span>'
        elif d["online"]:
            state = '<span class="pill online">online</span>'
        else:
            state = '<span class="pill offline">offline</span>'
        reading = ""
        if d.get("moisture_pct") is not None:
            reading = f"moisture {_num(d['moisture_pct'])} %"
        if d.get("battery_pct") is not None:
            reading += (" · " if reading else "") + f"battery {_num(d['battery_pct'])} %"
        if d.get("pump_on") is not None:
            reading += (" · " if reading else "") + f"pump {'on' if d['pump_on'] else 'off'}"
        spark = ""
        if d["device_key"] in sparks:
            name, points = sparks[d["device_key"]]
            gap_s = GAP_FACTOR * SPARK_BUCKET_S
            spark = svg.sparkline(points, label=f"{name}, last {SPARK_HOURS} h", gap_s=gap_s)
        key = escape(d["device_key"])
        out.append(
            f'<tr id="dev-{key}" data-key="{key}">'
            + _cells(
                (
                    _dev_link(d["device_key"]),
                    escape(d["device_type"] or ""),
                    state,
                    _time(d["last_seen"], relative=True),
                    escape(d["firmware"] or ""),
                    escape(d["channel"]),
                    reading,
                    spark,
                )
            )
            + "</tr>"
        )
    return (
        "".join(out) or '<tr class="empty"><td colspan="8" class="muted">no devices yet</td></tr>'
    )


def fleet_table(devices: Sequence[dict[str, Any]], sparks: Sparks | None = None) -> str:
    head = "".join(f"<th>{h}</th>" for h in FLEET_HEADERS)
    return (
        f'<table id="fleet" class="stack"><thead><tr>{head}</tr></thead>'
        f"<tbody>{fleet_rows(devices, sparks)}</tbody></table>"
    )


def range_charts(device: str | None, *, default: str = "1d") -> str:
    """Charts over a chosen range, drawn by dash.js with uPlot from /api/stats/series."""
    scope = f' data-device="{escape(device)}"' if device else ""
    buttons = "".join(
        f'<button type="button" data-range="{r}" aria-pressed="{str(r == default).lower()}">'
        f"{label}</button>"
        for r, label in (("1h", "1 h"), ("1d", "1 day"), ("7d", "7 days"), ("30d", "30 days"))
    )
    return (
        f'<div class="range-charts" id="range-charts" data-range="{default}"{scope}>'
        f'<div class="ranges">{buttons}<span class="chart-source muted"></span>'
        '<span class="muted">markers: <span class="mk mk-reboot"></span>reboot '
        '<span class="mk mk-install"></span>install <span class="mk mk-alert"></span>alert'
        '</span></div><div class="chart-body"></div></div>'
    )


# -- alerts ------------------------------------------------------------------------------------
def _alert_row(a: dict[str, Any]) -> str:
    detail = ", ".join(f"{k} {v}" for k, v in sorted(a["detail"].items()))
    action = ""
    if a["state"] == "open" and a["acked_at"] is None:
        action = (
            f'<button type="button" data-act="POST /api/alerts/{a["id"]}/ack" '
            f'data-out="#alert-out-{a["id"]}" data-then="#alerts">acknowledge</button>'
            f'<span class="result" id="alert-out-{a["id"]}"></span>'
        )
    elif a["acked_at"] is not None:
        action = f"acked {_time(a['acked_at'], relative=True)}"
    subject = _dev_link(a["device_key"]) if a["device_key"] else escape(a["subject"] or "fleet")
    when = _time(a["opened_at"], relative=True)
    if a["closed_at"] is not None:
        when += f" – {_time(a['closed_at'], relative=True)}"
    return (
        f'<tr id="alert-{a["id"]}" data-alert="{a["id"]}">'
        f'<td data-label="kind" class="code">{escape(a["kind"])}</td>'
        f'<td data-label="subject">{subject}</td>'
        f'<td data-label="when">{when}</td>'
        f'<td data-label="detail" class="wrap">{escape(detail)}</td>'
        f'<td data-label="">{action}</td></tr>'
    )


def alerts_panel(alerts: Sequence[dict[str, Any]]) -> str:
    groups = (
        ("open", [a for a in alerts if a["state"] == "open" and a["acked_at"] is None]),
        ("acknowledged", [a for a in alerts if a["state"] == "open" and a["acked_at"] is not None]),
        ("closed", [a for a in alerts if a["state"] == "closed"]),
    )
    out = []
    for name, rows in groups:
        body = "".join(_alert_row(a) for a in rows) or (
            f'<tr class="empty"><td colspan="5" class="muted">none {name}</td></tr>'
        )
        out.append(
            f'<h3>{name} <span class="n" data-alerts-{name}="{len(rows)}">{len(rows)}</span></h3>'
            f'<table class="stack" id="alerts-{name}"><tbody>{body}</tbody></table>'
        )
    return "".join(out)


# -- errors and deploy log -----------------------------------------------------------------------
def error_table(errors: Sequence[dict[str, Any]]) -> str:
    rows = (
        f'<tr id="err-{e["id"]}"><td>{_time(e["created_at"], relative=True)}</td>'
        f'<td class="code">{escape(e["code"])}</td><td>{_dev_link(e["device_key"])}</td>'
        f"<td>{escape(e['topic'])}</td><td class=wrap>{escape(e['detail'])}</td>"
        f'<td><pre class="payload">{escape(e["payload"])}</pre></td></tr>'
        for e in errors
    )
    headers = ("when", "code", "device", "topic", "detail", "raw payload")
    return _table("errors", headers, rows, "no ingest errors", 6)


def deploy_table(events: Sequence[dict[str, Any]]) -> str:
    rows = (
        f"<tr><td>{_time(d['created_at'], relative=True)}</td><td>{_dev_link(d['device_key'])}</td>"
        f"<td>{escape(d['version'] or '')}</td><td>{escape(d['state'])}</td>"
        f"<td>{escape(d['reason'] or '')}</td><td>{escape(d['source'])}</td></tr>"
        for d in events
    )
    headers = ("when", "device", "version", "state", "reason", "source")
    return _table("deploys", headers, rows, "no deployments yet", 6)


# -- metric views ------------------------------------------------------------------------------
def metric_table(name: str, rows: Sequence[dict[str, Any]]) -> str:
    title = METRIC_VIEWS[name][1]
    cols = [c for c in (rows[0].keys() if rows else ()) if c != "device_id"]
    body = (
        "<tr>"
        + "".join(
            f"<td>{_dev_link(r[c])}</td>"
            if c == "device_key"
            else f'<td class="num">{_num(r[c])}</td>'
            if not isinstance(r[c], datetime)
            else f"<td>{_time(r[c])}</td>"
            for c in cols
        )
        + "</tr>"
        for r in rows
    )
    table = _table(f"metric-{name}", cols, body, "no data", max(len(cols), 1))
    return f'<div id="m-{name}"><h3>{escape(title)}</h3>{table}</div>'


# -- OTA -----------------------------------------------------------------------------------
_ROLLOUT_FIELDS = ("version", "device_type", "kind", "channel", "state", "reason", "created_at")


def _fact(name: str, value: Any) -> str:
    """A rollout field; times (ISO text in the row's JSON) as relative times."""
    if name.endswith("_at") and isinstance(value, str):
        try:
            return _time(datetime.fromisoformat(value), relative=True)
        except ValueError:
            pass
    return escape(str(value))


def rollout_block(r: dict[str, Any], *, can_roll_back: bool = False) -> str:
    ro = r["rollout"]
    rid = ro.get("id", ro.get("rollout_id", ""))
    facts = "".join(
        f"<dt>{escape(k.replace('_', ' '))}</dt><dd>{_fact(k, ro[k])}</dd>"
        for k in _ROLLOUT_FIELDS
        if ro.get(k) is not None
    )
    waves = "".join(
        f"<tr><td>{escape(w['wave'])}</td>"
        f"<td>{svg.stacked_bar(sorted(w['states'].items()))}</td>"
        f"<td class=wrap>{escape(', '.join(f'{s} {n}' for s, n in sorted(w['states'].items())))}"
        f'</td><td class="num">{w["total"]}</td></tr>'
        for w in r["waves"]
    )
    wave_table = _table(
        f"waves-{escape(str(rid))}",
        ("wave", "progress", "states", "devices"),
        [waves] if waves else [],
        "no devices targeted yet",
        4,
    )
    return (
        f'<div class="rollout" id="rollout-{escape(str(rid))}" '
        f'data-state="{escape(ro.get("state") or "")}">'
        f"<h3>rollout {escape(str(rid))}</h3>"
        f'<dl class="kv">{facts}</dl>{rollout_actions(ro, can_roll_back)}{wave_table}</div>'
    )


def rollout_actions(ro: dict[str, Any], can_roll_back: bool) -> str:
    rid, state = ro.get("id"), ro.get("state")
    if rid is None:
        return ""
    out = 'data-out="#rollouts-result" data-then="#rollouts-body"'
    what = f"rollout {int(rid)}"
    buttons = [
        f'<button type="button" data-act="POST /api/ota/rollouts/{int(rid)}/{name}" '
        f'{out} data-what="{what} {name}" data-action="{name}"'
        f"{'' if state in states else ' disabled'}"
        f"{' class=danger' if name == 'abort' else ''}>{name}</button>"
        # A button the rollout's state would only earn a 409 for is shown disabled.
        for name, states in ACTIONS.items()
    ]
    if can_roll_back:
        body = escape(json.dumps({"device_type": ro["device_type"]}))
        buttons.append(
            f'<button type="button" class="danger" data-act="POST /api/ota/rollback" '
            f'data-body="{body}" {out} data-what="{what} rollback" '
            f'data-action="rollback" data-confirm="Roll every {escape(ro["device_type"])} '
            f'device back to the previous good release?">rollback</button>'
        )
    return f'<div class="actions">{"".join(buttons)}</div>'


def rollouts_body(rollouts: Sequence[dict[str, Any]]) -> str:
    """Newest first. Rollback acts on a device type's latest fleet rollout, so only that one
    (not yet rolled back) carries the button."""
    seen: set[str] = set()
    blocks = []
    for r in rollouts:
        ro = r["rollout"]
        dtype, fleet = ro.get("device_type"), ro.get("kind") in FLEET_KINDS
        latest = bool(dtype) and fleet and dtype not in seen
        if latest:
            seen.add(dtype)
        can = latest and ro.get("state") != "rolled_back"
        blocks.append(rollout_block(r, can_roll_back=can))
    return "".join(blocks) or "none yet"


# -- pages -----------------------------------------------------------------------------------
def dashboard(
    *,
    devices: Sequence[dict[str, Any]],
    sparks: Sparks,
    alerts: Sequence[dict[str, Any]],
    metrics: dict[str, list[dict[str, Any]]],
    errors: Sequence[dict[str, Any]],
    rollouts: Sequence[dict[str, Any]],
    deploys: Sequence[dict[str, Any]],
    counters: dict[str, int],
    ota_enabled: bool,
    after: int,
) -> str:
    metric_html = "".join(metric_table(name, rows) for name, rows in metrics.items())
    ota = ""
    if ota_enabled:
        ota = (
            # The result sits outside the fragment, which live updates replace.
            '<section id="rollouts"><h2>OTA rollouts</h2>'
            '<p class="result" id="rollouts-result" aria-live="polite"></p>'
            '<div id="rollouts-body" data-fragment="/fragments/rollouts">'
            f"{rollouts_body(rollouts)}</div></section>"
        )
    content = (
        f"<section><h2>Fleet</h2>{fleet_table(devices, sparks)}</section>"
        '<section class="alerts"><h2>Alerts</h2><div id="alerts" data-fragment="/fragments/alerts">'
        f"{alerts_panel(alerts)}</div></section>"
        f"<section><h2>Fleet trends</h2>{range_charts(None)}</section>"
        f'<section><h2>Ingest errors</h2><div id="errors-wrap">{error_table(errors)}</div>'
        "</section>"
        f"{ota}"
        f"<section><h2>Deploy log</h2>{deploy_table(deploys)}</section>"
        # The seed's views are about the legacy platform fleet: folded away when all empty.
        f"<section><details{' open' if any(metrics.values()) else ''}><summary><h2 "
        f'style="display:inline">Metrics (legacy views)</h2></summary>'
        f'<div class="metrics">{metric_html}</div></details></section>'
    )
    return layout("picofleet", content, counters, after=after)


def charts(series: Sequence[dict[str, Any]]) -> str:
    if not series:
        return '<p class="muted">no readings yet</p>'
    return "".join(
        svg.line_chart(s["points"], title=s["type"], unit=s["unit"], step=s["unit"] == "bool")
        for s in series
    )


# Device commands (POST /api/devices/{key}/cmd, picofleet.ops.commands): label, JSON body.
DEVICE_COMMANDS = (
    ("pump 5 s", {"cmd": "pump", "seconds": 5}),
    ("stop", {"cmd": "stop"}),
    ("reboot", {"cmd": "reboot"}),
)


_REBOOT_CONFIRM = ' data-confirm="Reboot this device?"'


def device_actions(key: str) -> str:
    url = f"/api/devices/{quote(key)}/cmd"
    buttons = "".join(
        f'<button type="button" data-act="POST {url}" data-body="{escape(json.dumps(body))}" '
        f'data-out="#cmd-result" data-action="{escape(str(body["cmd"]))}"'
        f"{_REBOOT_CONFIRM if body['cmd'] == 'reboot' else ''}>{escape(label)}</button>"
        for label, body in DEVICE_COMMANDS
    )
    return (
        f'<div class="actions" id="commands">{buttons}'
        '<span class="result" id="cmd-result" aria-live="polite"></span></div>'
    )


def device_page(
    dev: dict[str, Any],
    *,
    errors: Sequence[dict[str, Any]],
    deploys: Sequence[dict[str, Any]],
    counters: dict[str, int],
    after: int,
) -> str:
    key = dev["device_key"]
    facts = {
        "type": dev["device_type"] or "",
        "state": ("blocked" if dev["blocked"] else "online" if dev["online"] else "offline"),
        "firmware": dev["firmware"] or "",
        "channel": dev["channel"],
        "serial": dev["serial"] or "",
        "id": dev["id"],
    }
    kv = "".join(f"<dt>{k}</dt><dd>{escape(str(v))}</dd>" for k, v in facts.items())
    kv += (
        f"<dt>last seen</dt><dd>{_time(dev['last_seen'], relative=True)}</dd>"
        f"<dt>first seen</dt><dd>{_time(dev['first_seen'], relative=True)}</dd>"
        f"<dt>provisioned</dt><dd>{_time(dev['provisioned_at'], relative=True)}</dd>"
    )
    status = ""
    if dev.get("status"):
        status = (
            "<h3>last status</h3>"
            f'<pre class="payload">{escape(json.dumps(dev["status"], indent=1))}</pre>'
        )
    content = (
        f'<section><h2>{escape(key)}</h2><dl class="kv">{kv}</dl>{device_actions(key)}'
        f"{status}</section>"
        f"<section><h2>History</h2>{range_charts(key, default='7d')}</section>"
        f'<section><h2>Live: last readings</h2><div id="charts" class="charts">'
        f"{charts(dev['series'])}</div></section>"
        f"<section><h2>Ingest errors</h2>{error_table(errors)}</section>"
        f"<section><h2>Deploy log</h2>{deploy_table(deploys)}</section>"
    )
    return layout(f"{key} · picofleet", content, counters, after=after, device=key)
