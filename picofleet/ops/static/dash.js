// picofleet dashboard: operator actions and range charts (uPlot, vendored in /static/uplot).
// The operator token is typed once and kept in sessionStorage (this tab only), sent as a
// bearer header, never put in a URL. Values from the server go in with textContent only.
(() => {
  const TOKEN_KEY = 'picofleet.operator_token';
  const $ = (s, el = document) => el.querySelector(s);
  const $$ = (s, el = document) => [...el.querySelectorAll(s)];

  // -- token ----------------------------------------------------------------------------------
  const showToken = () => {
    const b = $('#token');
    if (b) b.textContent = sessionStorage.getItem(TOKEN_KEY) ? 'token set (forget)' : 'operator token';
  };
  const token = () => {
    let t = sessionStorage.getItem(TOKEN_KEY);
    if (!t) {
      t = (window.prompt('Operator token (picofleet creds operator):') || '').trim();
      if (t) sessionStorage.setItem(TOKEN_KEY, t);
      showToken();
    }
    return t;
  };
  document.addEventListener('click', (ev) => {
    if (ev.target.id !== 'token') return;
    if (sessionStorage.getItem(TOKEN_KEY)) sessionStorage.removeItem(TOKEN_KEY);
    else token();
    showToken();
  });

  // -- actions: <button data-act="POST url" data-body='{}' data-out="#sel" data-then="#frag">
  const refresh = async (sel) => {
    const el = $(sel);
    if (!el || !el.dataset.fragment) return;
    const r = await fetch(el.dataset.fragment, {cache: 'no-store'});
    if (r.ok) { el.innerHTML = await r.text(); window.picofleetTick && window.picofleetTick(); }
  };
  const act = async (btn) => {
    const [method, url] = btn.dataset.act.split(' ');
    const out = $(btn.dataset.out);
    if (btn.dataset.confirm && !window.confirm(btn.dataset.confirm)) return;
    const t = token();
    if (!t) { if (out) out.textContent = 'no operator token'; return; }
    btn.disabled = true;
    if (out) { out.textContent = 'sending…'; out.dataset.status = 'pending'; }
    try {
      const r = await fetch(url, {
        method,
        headers: {'Authorization': 'Bearer ' + t, 'Content-Type': 'application/json'},
        body: btn.dataset.body || '{}',
        cache: 'no-store',
      });
      const text = await r.text();
      let body = null;
      try { body = JSON.parse(text); } catch (_) { body = text; }
      if (r.status === 401 || r.status === 403) sessionStorage.removeItem(TOKEN_KEY);
      // The refreshed fragment may hold a new result element: write the outcome after it.
      if (r.ok && btn.dataset.then) await refresh(btn.dataset.then);
      const shown = $(btn.dataset.out);
      if (shown) {
        shown.textContent = (btn.dataset.what ? btn.dataset.what + ': ' : '') +
          describe(r.status, body);
        shown.dataset.status = String(r.status);
      }
    } catch (e) {
      if (out) { out.dataset.status = 'error'; out.textContent = String(e); }
    } finally {
      btn.disabled = false;
      showToken();
    }
  };
  const describe = (status, body) => {
    if (status === 401 || status === 403) return 'token refused (' + status + '); type it again';
    if (body && typeof body === 'object') {
      if (body.cmd !== undefined) {  // a device command
        if (!body.acked) return body.cmd + ' sent, no ack yet (' + status + ')';
        const a = body.ack || {};
        return body.cmd + ' acked by ' + body.device_key + ': ' +
          (a.ok ? 'ok' : 'refused, ' + a.error) + (a.detail ? ' (' + a.detail + ')' : '');
      }
      if (body.detail !== undefined && status >= 400) {
        return status + ': ' + (typeof body.detail === 'string' ? body.detail : JSON.stringify(body.detail));
      }
      if (body.state !== undefined) return 'now ' + body.state;
      if (body.acked_at) return 'acknowledged';
    }
    return String(status);
  };
  document.addEventListener('click', (ev) => {
    const btn = ev.target.closest('button[data-act]');
    if (btn) { ev.preventDefault(); act(btn); }
  });

  // -- charts -------------------------------------------------------------------------------------
  const COLORS = ['#2563eb', '#16a34a', '#d97706', '#9333ea', '#dc2626', '#0891b2', '#4b5563'];
  const MARK = {reboot: '#6b7280', install: '#16a34a', alert: '#dc2626'};
  const fmtAgo = (t) => {
    const s = Math.round(Date.now() / 1000 - t);
    if (s < 60) return Math.max(s, 0) + ' s ago';
    if (s < 3600) return Math.round(s / 60) + ' min ago';
    if (s < 86400) return Math.round(s / 3600) + ' h ago';
    return Math.round(s / 86400) + ' d ago';
  };
  const exact = (t) => new Date(t * 1000).toISOString().replace('.000Z', 'Z');

  const markersPlugin = (markers, threshold) => ({
    hooks: {
      draw: [(u) => {
        const ctx = u.ctx, {left, top, width, height} = u.bbox;
        ctx.save();
        ctx.lineWidth = Math.max(1, devicePixelRatio);
        for (const m of markers) {
          const x = Math.round(u.valToPos(m.t, 'x', true));
          if (x < left || x > left + width) continue;
          ctx.strokeStyle = MARK[m.kind] || '#888';
          ctx.setLineDash(m.kind === 'alert' ? [4, 3] : []);
          ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
        }
        if (threshold != null) {
          const y = Math.round(u.valToPos(threshold, 'y', true));
          ctx.strokeStyle = '#dc2626'; ctx.setLineDash([6, 4]);
          ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + width, y); ctx.stroke();
        }
        ctx.restore();
      }],
    },
  });

  const drawChart = (host, type, list, markers) => {
    const first = list[0];
    const box = document.createElement('div');
    box.className = 'uchart'; box.dataset.type = type;
    const h = document.createElement('h3');
    h.textContent = type + (first.unit && first.unit !== 'bool' ? ' (' + first.unit + ')' : '') +
      (first.threshold != null ? ' · threshold ' + first.threshold : '');
    box.appendChild(h);
    host.appendChild(box);
    const width = Math.max(200, box.clientWidth);
    // One aligned table for all devices: missing x of one device is undefined (spanned),
    // a null from the server is a real gap.
    const tables = list.map((s) => [s.points.map((p) => p[0]), s.points.map((p) => p[1])]);
    const data = tables.length === 1 ? tables[0] : uPlot.join(tables);
    const values = list.flatMap((s) => s.points.map((p) => p[1]).filter((v) => v != null));
    if (first.threshold != null) values.push(first.threshold);
    const lo = Math.min(...values), hi = Math.max(...values), pad = (hi - lo) * 0.08 || 1;
    const opts = {
      width, height: 180,
      scales: {x: {time: true}, y: {range: first.step ? [-0.1, 1.1] : [lo - pad, hi + pad]}},
      legend: {show: list.length > 1},
      cursor: {drag: {x: false, y: false}},
      series: [{}].concat(list.map((s, i) => ({
        label: s.device, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: false,
        paths: s.step ? uPlot.paths.stepped({align: 1}) : undefined,
        points: {show: false},
      }))),
      axes: [{}, {size: 48}],
      plugins: [markersPlugin(markers, first.threshold)],
    };
    const plot = new uPlot(opts, data, box);
    window.picofleetCharts = window.picofleetCharts || {};
    window.picofleetCharts[type] = {
      devices: list.map((s) => s.device),
      points: list.map((s) => s.points.filter((p) => p[1] != null).length),
      gaps: list.map((s) => s.points.filter((p) => p[1] == null).length),
      step: first.step, threshold: first.threshold, markers: markers.length, plot,
    };
  };

  const markerList = (host, markers) => {
    if (!markers.length) return;
    const ul = document.createElement('ul');
    ul.className = 'markers';
    for (const m of markers.slice(-20).reverse()) {
      const li = document.createElement('li'), dot = document.createElement('span');
      dot.className = 'mk mk-' + m.kind; li.appendChild(dot);
      const t = document.createElement('time');
      t.textContent = fmtAgo(m.t); t.title = exact(m.t); t.setAttribute('datetime', exact(m.t));
      li.appendChild(t); li.appendChild(document.createTextNode(' ' + m.label));
      ul.appendChild(li);
    }
    host.appendChild(ul);
  };

  const loadCharts = async (host, range) => {
    host.dataset.ready = '';
    const q = new URLSearchParams({range});
    if (host.dataset.device) q.set('device', host.dataset.device);
    const r = await fetch('/api/stats/series?' + q, {cache: 'no-store'});
    const out = $('.chart-body', host);
    out.textContent = '';
    window.picofleetCharts = {};
    if (!r.ok) { out.textContent = 'charts unavailable (' + r.status + ')'; return; }
    const chart = await r.json();
    const byType = new Map();
    for (const s of chart.series) {
      if (!byType.has(s.type)) byType.set(s.type, []);
      byType.get(s.type).push(s);
    }
    if (!byType.size) {
      const p = document.createElement('p'); p.className = 'muted';
      p.textContent = 'no readings in this range'; out.appendChild(p);
    }
    for (const [type, list] of byType) drawChart(out, type, list, chart.markers);
    markerList(out, chart.markers);
    $$('.ranges button', host).forEach((b) => b.setAttribute('aria-pressed', String(b.dataset.range === range)));
    const src = $('.chart-source', host);
    if (src) src.textContent = 'from ' + chart.source + (chart.source === 'raw' ? ' readings' : ' rollups');
    host.dataset.since = chart.since;
    host.dataset.ready = range;
  };

  // Charts follow the page width (a phone turned sideways).
  let resizing = null;
  window.addEventListener('resize', () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => {
      for (const box of $$('.uchart')) {
        const c = (window.picofleetCharts || {})[box.dataset.type];
        if (c) c.plot.setSize({width: Math.max(200, box.clientWidth), height: 180});
      }
    }, 200);
  });

  for (const host of $$('.range-charts')) {
    host.addEventListener('click', (ev) => {
      const b = ev.target.closest('.ranges button[data-range]');
      if (b) loadCharts(host, b.dataset.range);
    });
    if (typeof uPlot !== 'undefined') loadCharts(host, host.dataset.range || '1d');
  }
  // Alerts open and close with the analytics job, rollouts move on their own: refresh both
  // while the page is in view (deploy events refresh rollouts sooner, see the inline script).
  setInterval(() => {
    if (document.visibilityState === 'visible') { refresh('#alerts'); refresh('#rollouts-body'); }
  }, 30000);
  showToken();
})();
