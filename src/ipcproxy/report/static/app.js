/* ipcproxy report: the page's own code (the model comes from ipcproxy.report.model; docs/report.md).
 * The sequence diagram is drawn on a canvas, only the rows in view, so 100,000+ messages scroll;
 * the component graph is Cytoscape.js, the charts Chart.js. */
(function () {
  'use strict';

  const KIND_COLORS = ['#1565c0', '#2e7d32', '#c62828', '#6a1b9a', '#00838f'];
  const KIND_LABELS = ['call', 'return', 'error', 'signal', 'data'];
  const VERDICT_COLORS = [null, '#d50000', '#c51162', '#ff6d00', '#546e7a'];
  const VERDICT_LABELS = ['forwarded', 'denied', 'violation', 'fault injected', 'injected'];
  const HEAD = 36;   // px of lifeline names at the top of the diagram
  const LEFT = 118;  // px of the time/seq column

  function loadJSON(id) {
    const el = document.getElementById(id);
    if (!el) return null;
    const text = el.textContent;
    return text.trim() ? JSON.parse(text) : null;
  }

  function fmtBytes(n) {
    if (n < 1024) return n + ' B';
    if (n < 1048576) return (n / 1024).toFixed(1) + ' KiB';
    return (n / 1048576).toFixed(1) + ' MiB';
  }

  function fmtMs(ns) { return ns == null || ns < 0 ? '-' : (ns / 1e6).toFixed(3); }

  function percentile(sorted, p) {
    if (!sorted.length) return null;
    return sorted[Math.max(1, Math.ceil(p / 100 * sorted.length)) - 1];
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') node.className = v;
      else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }

  function shortName(name) {
    if (name === '*') return '(broadcast)';
    if (name.startsWith('/')) return name.slice(name.lastIndexOf('/') + 1) || name;
    return name;
  }

  /* ------------------------------------------------------------------ the trace: columns of the model */
  class Trace {
    constructor(model, details) {
      this.lifelines = [];
      this.strings = [];
      this.cols = {};
      this.details = details || null;
      this.detailsSource = null;
      this.n = 0;
      this.replyOf = null;
      this.reset(model, details);
    }

    reset(model, details) {
      this.model = model;
      this.lifelines = model.lifelines.slice();
      this.strings = model.strings.slice();
      this.cols = {};
      for (const [k, v] of Object.entries(model.messages)) this.cols[k] = v.slice();
      this.n = this.cols.seq.length;
      this.details = details || this.details;
      this.replyOf = null;
    }

    append(part, details) {
      // rows numbered from part.start; lifelines and strings are sent whole
      this.lifelines = part.lifelines.slice();
      this.strings = part.strings.slice();
      for (const [k, v] of Object.entries(part.messages)) {
        this.cols[k].length = part.start;
        for (const x of v) this.cols[k].push(x);
      }
      this.n = this.cols.seq.length;
      if (details && this.details) {
        this.details.length = part.start;
        for (const d of details) this.details.push(d);
      }
      this.replyOf = null;
    }

    str(i) { return i < 0 ? '' : this.strings[i]; }
    member(row) { return this.str(this.cols.member[row]); }

    record(row) {
      if (!this.details && this.detailsSource) this.details = this.detailsSource();
      return this.details ? this.details[row] : null;
    }

    answeredBy(row) {
      if (!this.replyOf) {
        this.replyOf = new Map();
        const reply = this.cols.reply;
        for (let i = 0; i < this.n; i++) if (reply[i] >= 0) this.replyOf.set(reply[i], i);
      }
      const r = this.replyOf.get(row);
      return r === undefined ? -1 : r;
    }
  }

  /* ------------------------------------------------------------------ the sequence diagram */
  class SeqView {
    constructor(scroll, canvas, spacer, trace, opts) {
      this.scroll = scroll;
      this.canvas = canvas;
      this.spacer = spacer;
      this.trace = trace;
      this.opts = opts || {};
      this.rows = new Int32Array(0);
      this.rowH = this.opts.rowH || 22;
      this.laneW = this.opts.laneW || 150;
      this.lanes = [];
      this.laneOf = new Int32Array(0);
      this.selected = -1;
      this.mark = -1;        // a row drawn highlighted (the first divergence of a campaign run)
      this.pending = false;
      scroll.addEventListener('scroll', () => this.request());
      scroll.addEventListener('wheel', (ev) => {
        if (!ev.ctrlKey) return;
        ev.preventDefault();
        this.zoom(ev.deltaY < 0 ? 1.2 : 1 / 1.2, ev.offsetY);
      }, { passive: false });
      canvas.addEventListener('click', (ev) => this.click(ev));
      if (window.ResizeObserver) new ResizeObserver(() => this.request()).observe(scroll);
    }

    setRows(rows) {
      this.rows = rows;
      const used = new Uint8Array(this.trace.lifelines.length);
      const { src, dst } = this.trace.cols;
      for (let k = 0; k < rows.length; k++) { used[src[rows[k]]] = 1; used[dst[rows[k]]] = 1; }
      this.lanes = [];
      this.laneOf = new Int32Array(this.trace.lifelines.length).fill(-1);
      for (let l = 0; l < used.length; l++) if (used[l]) { this.laneOf[l] = this.lanes.length; this.lanes.push(l); }
      this.layout();
    }

    layout() {
      this.spacer.style.height = (HEAD + this.rows.length * this.rowH + 24) + 'px';
      this.spacer.style.width = (LEFT + this.lanes.length * this.laneW + 24) + 'px';
      this.request();
    }

    zoom(factor, anchorY) {
      const y = anchorY === undefined ? this.scroll.clientHeight / 2 : anchorY;
      const row = (this.scroll.scrollTop + y - HEAD) / this.rowH;
      this.rowH = Math.max(3, Math.min(60, this.rowH * factor));
      this.layout();
      this.scroll.scrollTop = Math.max(0, row * this.rowH - y + HEAD);
    }

    widen(factor) {
      this.laneW = Math.max(50, Math.min(500, this.laneW * factor));
      this.layout();
    }

    request() {
      if (this.pending) return;
      this.pending = true;
      requestAnimationFrame(() => { this.pending = false; this.render(); });
    }

    position(row) {
      // index in this.rows of a trace row (binary search: rows are in trace order)
      const rows = this.rows;
      let lo = 0, hi = rows.length - 1;
      while (lo <= hi) {
        const mid = (lo + hi) >> 1;
        if (rows[mid] === row) return mid;
        if (rows[mid] < row) lo = mid + 1; else hi = mid - 1;
      }
      return -1;
    }

    scrollToRow(row) {
      const pos = this.position(row);
      if (pos < 0) return;
      const top = pos * this.rowH, view = this.scroll.clientHeight - HEAD;
      if (top < this.scroll.scrollTop || top > this.scroll.scrollTop + view - this.rowH) {
        this.scroll.scrollTop = Math.max(0, top - view / 3);
      }
      // and sideways, so that both ends of the arrow are in view when they fit
      const c = this.trace.cols, a = this.laneOf[c.src[row]], b = this.laneOf[c.dst[row]];
      const x1 = LEFT + Math.min(a, b) * this.laneW, x2 = LEFT + (Math.max(a, b) + 1) * this.laneW;
      const sl = this.scroll.scrollLeft, width = this.scroll.clientWidth;
      if (x1 - LEFT < sl || x2 > sl + width) this.scroll.scrollLeft = Math.max(0, x1 - LEFT - Math.max(0, (width - LEFT - (x2 - x1)) / 2));
      this.request();
    }

    rowY(pos) { return HEAD + pos * this.rowH - this.scroll.scrollTop + this.rowH / 2; }

    click(ev) {
      const rect = this.canvas.getBoundingClientRect();
      const y = ev.clientY - rect.top;
      if (y < HEAD) return;
      const pos = Math.floor((this.scroll.scrollTop + y - HEAD) / this.rowH);
      if (pos < 0 || pos >= this.rows.length) return;
      this.select(this.rows[pos]);
      if (this.opts.onSelect) this.opts.onSelect(this.rows[pos]);
    }

    select(row) { this.selected = row; this.request(); }

    laneX(lifeline) { return LEFT + this.laneOf[lifeline] * this.laneW + this.laneW / 2 - this.scroll.scrollLeft; }

    render() {
      const dpr = window.devicePixelRatio || 1;
      const W = this.scroll.clientWidth, H = this.scroll.clientHeight;
      if (!W || !H) return;
      if (this.canvas.width !== Math.round(W * dpr) || this.canvas.height !== Math.round(H * dpr)) {
        this.canvas.width = Math.round(W * dpr);
        this.canvas.height = Math.round(H * dpr);
        this.canvas.style.width = W + 'px';
        this.canvas.style.height = H + 'px';
        this.canvas.style.marginBottom = (-H) + 'px';
      }
      const ctx = this.canvas.getContext('2d');
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, W, H);
      ctx.fillStyle = '#fff';
      ctx.fillRect(0, 0, W, H);
      const t = this.trace, c = t.cols, rows = this.rows, rowH = this.rowH, st = this.scroll.scrollTop;
      const first = Math.max(0, Math.floor(st / rowH));
      const last = Math.min(rows.length - 1, Math.floor((st + H - HEAD) / rowH) + 1);
      this.drawn = [first, last];
      // lifelines
      ctx.strokeStyle = '#cfd8dc';
      ctx.lineWidth = 1;
      for (const l of this.lanes) {
        const x = Math.round(this.laneX(l)) + 0.5;
        if (x < LEFT - 2 || x > W + 2) continue;
        ctx.beginPath(); ctx.moveTo(x, HEAD); ctx.lineTo(x, H); ctx.stroke();
      }
      const labels = rowH >= 13;
      ctx.font = '11px system-ui, sans-serif';
      ctx.textBaseline = 'bottom';
      const t0 = c.t.length ? c.t[0] : 0;
      for (let pos = first; pos <= last; pos++) {
        const i = rows[pos];
        const y = HEAD + pos * rowH - st + rowH / 2;
        if (i === this.selected || i === this.mark) {
          ctx.fillStyle = i === this.mark ? 'rgba(255,193,7,0.35)' : 'rgba(33,150,243,0.18)';
          ctx.fillRect(LEFT, y - rowH / 2, W - LEFT, rowH);
        }
        const kind = c.kind[i], verdict = c.verdict[i];
        const x1 = this.laneX(c.src[i]), x2 = this.laneX(c.dst[i]);
        const color = verdict ? VERDICT_COLORS[verdict] : KIND_COLORS[kind];
        ctx.strokeStyle = color;
        ctx.fillStyle = color;
        ctx.lineWidth = verdict ? 3 : (rowH < 6 ? 1 : 1.5);
        ctx.setLineDash(kind === 1 || kind === 2 ? [5, 3] : []);
        const ay = Math.round(y + (labels ? rowH * 0.2 : 0)) + 0.5;
        ctx.beginPath();
        if (x1 === x2) {
          ctx.moveTo(x1, ay - 4); ctx.lineTo(x1 + 18, ay - 4); ctx.lineTo(x1 + 18, ay + 2); ctx.lineTo(x1 + 4, ay + 2);
          ctx.stroke(); ctx.setLineDash([]);
          this.head(ctx, x1 + 4, ay + 2, -1);
        } else {
          ctx.moveTo(x1, ay); ctx.lineTo(x2, ay); ctx.stroke(); ctx.setLineDash([]);
          this.head(ctx, x2, ay, x2 > x1 ? 1 : -1);
        }
        if (labels) {
          let text = t.member(i) || KIND_LABELS[kind];
          if (kind === 1 && c.reply[i] >= 0) text = '↩ ' + t.member(c.reply[i]);
          if (c.latency[i] >= 0) text += '  ' + fmtMs(c.latency[i]) + ' ms';
          if (verdict) text += '  [' + VERDICT_LABELS[verdict] + ']';
          const lx = x1 === x2 ? x1 + 22 : Math.min(x1, x2) + 6;
          ctx.fillStyle = verdict ? color : '#37474f';
          const room = x1 === x2 ? this.laneW - 26 : Math.abs(x2 - x1) - 10;
          ctx.fillText(this.fit(ctx, text, Math.max(room, 60)), lx, ay - 2);
        }
      }
      // the time/seq column and the header stay in place while scrolling sideways
      ctx.fillStyle = '#f5f7f8';
      ctx.fillRect(0, HEAD, LEFT - 6, H - HEAD);
      if (labels) {
        ctx.fillStyle = '#607d8b';
        ctx.textBaseline = 'middle';
        for (let pos = first; pos <= last; pos++) {
          const i = rows[pos];
          const y = HEAD + pos * rowH - st + rowH / 2;
          ctx.fillText('+' + ((c.t[i] - t0) / 1e9).toFixed(6) + '  #' + c.seq[i], 4, y);
        }
      }
      for (let pos = first; pos <= last; pos++) {
        const i = rows[pos], v = c.verdict[i];
        if (!v) continue;
        ctx.fillStyle = VERDICT_COLORS[v];
        ctx.fillRect(LEFT - 12, HEAD + pos * rowH - st + 1, 5, Math.max(2, rowH - 2));
      }
      ctx.fillStyle = '#fff';
      ctx.fillRect(0, 0, W, HEAD);
      ctx.strokeStyle = '#90a4ae';
      ctx.beginPath(); ctx.moveTo(0, HEAD - 0.5); ctx.lineTo(W, HEAD - 0.5); ctx.stroke();
      ctx.font = '600 12px system-ui, sans-serif';
      ctx.textBaseline = 'middle';
      ctx.textAlign = 'center';
      for (const l of this.lanes) {
        const x = this.laneX(l);
        if (x < LEFT - this.laneW / 2 || x > W + this.laneW / 2) continue;
        ctx.fillStyle = '#263238';
        ctx.fillText(this.fit(ctx, shortName(t.lifelines[l]), this.laneW - 8), x, HEAD / 2);
      }
      ctx.textAlign = 'left';
      ctx.font = '11px system-ui, sans-serif';
      ctx.fillStyle = '#607d8b';
      ctx.fillText('time  seq', 4, HEAD / 2);
      if (window.ipcFirstPaint === undefined) window.ipcFirstPaint = performance.now();  // for bench/report_speed.py
    }

    head(ctx, x, y, dir) {
      ctx.beginPath();
      ctx.moveTo(x, y); ctx.lineTo(x - dir * 7, y - 4); ctx.lineTo(x - dir * 7, y + 4); ctx.closePath(); ctx.fill();
    }

    fit(ctx, text, width) {
      if (ctx.measureText(text).width <= width) return text;
      let lo = 0, hi = text.length;
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if (ctx.measureText(text.slice(0, mid) + '…').width <= width) lo = mid; else hi = mid - 1;
      }
      return text.slice(0, lo) + '…';
    }
  }

  /* ------------------------------------------------------------------ filters */
  class Filters {
    constructor(trace, onChange) {
      this.trace = trace;
      this.onChange = onChange;
      this.component = -1;
      this.iface = -1;
      this.member = '';
      this.types = new Set([0, 1, 2, 3, 4]);
      this.verdicts = new Set([0, 1, 2, 3, 4]);
      this.boxes = [];
      this.build();
    }

    build() {
      const types = document.getElementById('f-types');
      const verdicts = document.getElementById('f-verdicts');
      types.className = verdicts.className = 'group';
      KIND_LABELS.forEach((label, k) => types.append(this.box('type', label, k, this.types)));
      VERDICT_LABELS.forEach((label, v) => verdicts.append(this.box('verdict', label, v, this.verdicts)));
      document.getElementById('f-component').addEventListener('change', (ev) => { this.component = +ev.target.value; this.changed(); });
      document.getElementById('f-interface').addEventListener('change', (ev) => { this.iface = +ev.target.value; this.changed(); });
      document.getElementById('f-member').addEventListener('input', (ev) => { this.member = ev.target.value.trim().toLowerCase(); this.changed(); });
      document.getElementById('f-reset').addEventListener('click', () => this.reset());
      this.options();
    }

    box(group, label, value, set) {
      const input = el('input', { type: 'checkbox', 'data-filter': group, value: String(value) });
      input.checked = true;
      input.addEventListener('change', () => { if (input.checked) set.add(value); else set.delete(value); this.changed(); });
      this.boxes.push(input);
      return el('label', {}, input, ' ' + label);
    }

    options() {
      // the choices offered: every lifeline, interface and member of the trace
      const t = this.trace;
      const comp = document.getElementById('f-component');
      const keepC = comp.value;
      comp.replaceChildren(el('option', { value: '-1' }, '(all)'));
      t.lifelines.map((name, i) => [name, i]).sort((a, b) => a[0].localeCompare(b[0]))
        .forEach(([name, i]) => comp.append(el('option', { value: String(i) }, name === '*' ? '(broadcast)' : name)));
      comp.value = keepC || '-1';
      const ifaces = new Set(t.cols.iface), members = new Set(t.cols.member);
      const iface = document.getElementById('f-interface');
      const keepI = iface.value;
      iface.replaceChildren(el('option', { value: '-1' }, '(all)'));
      [...ifaces].filter((i) => i >= 0).map((i) => [t.strings[i], i]).sort((a, b) => a[0].localeCompare(b[0]))
        .forEach(([name, i]) => iface.append(el('option', { value: String(i) }, name)));
      iface.value = keepI || '-1';
      const list = document.getElementById('members');
      list.replaceChildren(...[...members].filter((i) => i >= 0).map((i) => t.strings[i]).sort()
        .map((name) => el('option', { value: name })));
    }

    reset() {
      this.component = -1; this.iface = -1; this.member = '';
      this.types = new Set([0, 1, 2, 3, 4]); this.verdicts = new Set([0, 1, 2, 3, 4]);
      document.getElementById('f-component').value = '-1';
      document.getElementById('f-interface').value = '-1';
      document.getElementById('f-member').value = '';
      this.boxes.forEach((b) => { b.checked = true; });
      this.boxes.length = 0;
      document.getElementById('f-types').replaceChildren();
      document.getElementById('f-verdicts').replaceChildren();
      KIND_LABELS.forEach((label, k) => document.getElementById('f-types').append(this.box('type', label, k, this.types)));
      VERDICT_LABELS.forEach((label, v) => document.getElementById('f-verdicts').append(this.box('verdict', label, v, this.verdicts)));
      this.changed();
    }

    setComponent(index) {
      this.component = index;
      document.getElementById('f-component').value = String(index);
      this.changed();
    }

    changed() { this.onChange(); }

    apply() {
      const t = this.trace, c = t.cols, n = t.n;
      const out = new Int32Array(n);
      let k = 0;
      const comp = this.component, iface = this.iface, types = this.types, verdicts = this.verdicts;
      let memberOk = null;
      if (this.member) {
        memberOk = new Uint8Array(t.strings.length);
        t.strings.forEach((s, i) => { if (s.toLowerCase().includes(this.member)) memberOk[i] = 1; });
      }
      for (let i = 0; i < n; i++) {
        if (comp >= 0 && c.src[i] !== comp && c.dst[i] !== comp) continue;
        if (iface >= 0 && c.iface[i] !== iface) continue;
        if (memberOk && (c.member[i] < 0 || !memberOk[c.member[i]])) continue;
        if (!types.has(c.kind[i]) || !verdicts.has(c.verdict[i])) continue;
        out[k++] = i;
      }
      return out.subarray(0, k);
    }
  }

  /* ------------------------------------------------------------------ the component graph */
  function edgeTally(trace, rows) {
    const c = trace.cols, L = trace.lifelines.length;
    const edges = new Map(), nodes = new Map();
    for (let k = 0; k < rows.length; k++) {
      const i = rows[k], s = c.src[i], d = c.dst[i], key = s * L + d;
      let e = edges.get(key);
      if (!e) { e = { s, d, count: 0, bytes: 0, errors: 0, denied: 0, faults: 0, violations: 0 }; edges.set(key, e); }
      e.count++; e.bytes += c.size[i];
      if (c.kind[i] === 2) e.errors++;
      const v = c.verdict[i];
      if (v === 1) e.denied++; else if (v === 3) e.faults++; else if (v === 2) e.violations++;
      for (const n of [s, d]) if (!nodes.has(n)) nodes.set(n, { errors: 0, denied: 0, faults: 0 });
      const ns = nodes.get(s);
      if (c.kind[i] === 2) ns.errors++;
      if (v === 1) nodes.get(d).denied++;
      if (v === 3) ns.faults++;
    }
    return { edges, nodes };
  }

  function edgeColor(e) {
    if (e.denied) return '#d50000';
    if (e.faults) return '#ff6d00';
    if (e.violations) return '#c51162';
    if (e.errors) return '#e57373';
    return '#90a4ae';
  }

  function graphElements(trace, rows, path) {
    const { edges, nodes } = edgeTally(trace, rows);
    const onPath = new Set(path || []);
    const out = [];
    for (const [n, info] of nodes) {
      const name = trace.lifelines[n];
      const order = path ? path.indexOf(name) : -1;
      out.push({ data: { id: 'n' + n, index: n, label: (order >= 0 ? (order + 1) + '. ' : '') + shortName(name), full: name,
        color: onPath.has(name) ? '#ff6d00' : info.denied ? '#ffcdd2' : info.errors ? '#ffe0b2' : '#e3f2fd',
        border: onPath.has(name) ? '#e65100' : '#546e7a' } });
    }
    for (const e of edges.values()) {
      out.push({ data: { id: 'e' + e.s + '_' + e.d, source: 'n' + e.s, target: 'n' + e.d, count: e.count, bytes: e.bytes,
        errors: e.errors, denied: e.denied, faults: e.faults,
        width: Math.min(14, 1 + Math.log2(e.count) * 1.5), color: edgeColor(e),
        label: e.count + ' · ' + fmtBytes(e.bytes) + (e.denied ? ' · ' + e.denied + ' denied' : '') +
          (e.faults ? ' · ' + e.faults + ' faults' : '') + (e.errors ? ' · ' + e.errors + ' errors' : '') } });
    }
    return out;
  }

  function drawGraph(container, trace, rows, opts) {
    const elements = graphElements(trace, rows, opts && opts.path);
    const nodeCount = elements.filter((e) => !e.data.source).length;
    const cy = cytoscape({
      container,
      elements,
      wheelSensitivity: 0.3,
      maxZoom: 1.4,
      style: [
        { selector: 'node', style: { label: 'data(label)', 'background-color': 'data(color)', 'border-width': 2,
          'border-color': 'data(border)', shape: 'round-rectangle', width: 'label', height: 26, padding: '8px',
          'text-valign': 'center', 'font-size': 14 } },
        { selector: 'edge', style: { width: 'data(width)', 'line-color': 'data(color)', 'target-arrow-color': 'data(color)',
          'target-arrow-shape': 'triangle', 'curve-style': 'bezier', label: 'data(label)', 'font-size': 12,
          'text-background-color': '#fff', 'text-background-opacity': 0.85, 'text-background-padding': '1px',
          'loop-direction': '0deg', 'loop-sweep': '-40deg' } },
      ],
      // a circle: the same picture every time, every pair of nodes reachable by a straight line
      layout: { name: 'circle', animate: false, padding: 40, spacingFactor: nodeCount > 12 ? 1 : 1.2,
        nodeDimensionsIncludeLabels: true, startAngle: Math.PI / 2 },
    });
    if (opts && opts.onNode) cy.on('tap', 'node', (ev) => opts.onNode(ev.target.data('index')));
    return cy;
  }

  /* ------------------------------------------------------------------ stats */
  function statsOf(trace, rows) {
    const c = trace.cols, L = trace.lifelines.length;
    const comps = new Map(), pairs = new Map();
    const comp = (l) => {
      let x = comps.get(l);
      if (!x) { x = { counts: [0, 0, 0, 0, 0], bytes: 0, bytesIn: 0, received: 0, lat: [] }; comps.set(l, x); }
      return x;
    };
    const pair = (s, d) => {
      const key = s * L + d;
      let x = pairs.get(key);
      if (!x) { x = { s, d, counts: [0, 0, 0, 0, 0], bytes: 0, lat: [] }; pairs.set(key, x); }
      return x;
    };
    for (let k = 0; k < rows.length; k++) {
      const i = rows[k], s = c.src[i], d = c.dst[i], kind = c.kind[i], size = c.size[i];
      const cs = comp(s);
      cs.counts[kind]++; cs.bytes += size;
      if (trace.lifelines[d] !== '*') { const cd = comp(d); cd.received++; cd.bytesIn += size; }
      const p = pair(s, d);
      p.counts[kind]++; p.bytes += size;
      if (c.latency[i] >= 0) { cs.lat.push(c.latency[i]); pair(d, s).lat.push(c.latency[i]); }
    }
    return { comps, pairs };
  }

  function latencyCells(values) {
    values.sort((a, b) => a - b);
    return [fmtMs(percentile(values, 50)), fmtMs(percentile(values, 90)), fmtMs(percentile(values, 99))];
  }

  function table(node, headers, rows, onRow) {
    const names = rows.length ? rows[0].names || 1 : 1;
    node.replaceChildren(el('thead', {}, el('tr', {}, ...headers.map((h, j) => el('th', j < names ? { class: 'name' } : {}, h)))));
    const body = el('tbody');
    for (const r of rows) {
      const tr = el('tr', r.attrs || {}, ...r.cells.map((v, j) => el('td', j < (r.names || 1) ? { class: 'name' } : {}, v)));
      if (r.cls) tr.classList.add(r.cls);
      if (onRow) { tr.classList.add('clickable'); tr.addEventListener('click', () => onRow(r)); }
      body.append(tr);
    }
    node.append(body);
  }

  function timelineData(trace, rows, bins) {
    const c = trace.cols;
    if (!rows.length) return { labels: [], sets: KIND_LABELS.map(() => []), width: 0 };
    const t0 = c.t[rows[0]], t1 = c.t[rows[rows.length - 1]];
    const width = Math.max(1, (t1 - t0) / bins);
    const sets = KIND_LABELS.map(() => new Array(bins).fill(0));
    for (let k = 0; k < rows.length; k++) {
      const i = rows[k];
      sets[c.kind[i]][Math.min(bins - 1, Math.floor((c.t[i] - t0) / width))]++;
    }
    const base = c.t.length ? c.t[0] : 0;
    const labels = sets[0].map((_, b) => ((t0 - base + b * width) / 1e9).toFixed(3));
    return { labels, sets, width };
  }

  /* ------------------------------------------------------------------ the detail pane */
  function describe(trace, row, onJump) {
    const pane = document.getElementById('detail');
    const c = trace.cols, rec = trace.record(row) || {};
    const kind = c.kind[row], verdict = c.verdict[row];
    const items = [
      ['seq', c.seq[row]], ['time', rec.time || ''], ['type', rec.type || KIND_LABELS[kind]],
      ['from', trace.lifelines[c.src[row]]], ['to', trace.lifelines[c.dst[row]]],
    ];
    for (const key of ['path', 'interface', 'member', 'error_name', 'signature', 'serial', 'reply_serial', 'syscall', 'direction']) {
      if (rec[key] !== undefined && rec[key] !== null && rec[key] !== '') items.push([key, rec[key]]);
    }
    if (c.latency[row] >= 0) items.push(['latency', fmtMs(c.latency[row]) + ' ms']);
    items.push(['size', c.size[row] + ' B']);
    if (rec.fds) items.push(['fds', rec.fds]);
    items.push(['verdict', typeof rec.verdict === 'object' ? JSON.stringify(rec.verdict) : (rec.verdict || VERDICT_LABELS[verdict])]);
    const dl = el('dl');
    for (const [k, v] of items) dl.append(el('dt', {}, k), el('dd', { 'data-field': k }, String(v)));
    const title = el('h3', {}, (trace.member(row) || KIND_LABELS[kind]) + ' ');
    title.append(el('span', { class: 'badge', style: 'background:' + (verdict ? VERDICT_COLORS[verdict] : KIND_COLORS[kind]) },
      verdict ? VERDICT_LABELS[verdict] : KIND_LABELS[kind]));
    const parts = [title, dl];
    const links = el('p');
    if (c.reply[row] >= 0) links.append(el('a', { href: '#', onclick: (ev) => { ev.preventDefault(); onJump(c.reply[row]); } }, 'the call #' + c.seq[c.reply[row]]));
    const answer = kind === 0 ? trace.answeredBy(row) : -1;
    if (answer >= 0) links.append(el('a', { href: '#', onclick: (ev) => { ev.preventDefault(); onJump(answer); } }, 'its reply #' + c.seq[answer]));
    if (links.childNodes.length) parts.push(links);
    const lines = rec._lines || [];
    if (lines.length) parts.push(el('h3', {}, rec.type === 'data' ? 'payload' : 'arguments'), el('pre', { class: 'args', id: 'detail-args' }, lines.join('\n')));
    const raw = Object.assign({}, rec);
    delete raw._lines;
    const details = el('details', {}, el('summary', {}, 'full record'), el('pre', { id: 'detail-json' }, JSON.stringify(raw, null, 1)));
    parts.push(details);
    pane.replaceChildren(...parts);
    pane.dataset.seq = String(c.seq[row]);
  }

  /* ------------------------------------------------------------------ the page */
  class App {
    constructor(model) {
      this.model = model;
      this.trace = new Trace(model.trace || model, null);
      this.trace.detailsSource = model.kind === 'campaign' ? () => this.details()[0] || [] : () => this.details();
      this.rows = new Int32Array(0);
      this.tab = 'sequence';
      this.dirty = { graph: true, stats: true };
      this.cy = null;
      this.chart = null;
      document.getElementById('title').textContent = model.title || 'ipcproxy report';
      this.seq = new SeqView(document.getElementById('seq-scroll'), document.getElementById('seq-canvas'),
        document.getElementById('seq-spacer'), this.trace, { onSelect: (row) => this.select(row, false) });
      this.filters = new Filters(this.trace, () => this.refresh());
      document.getElementById('zoom-in').addEventListener('click', () => this.seq.zoom(1.25));
      document.getElementById('zoom-out').addEventListener('click', () => this.seq.zoom(1 / 1.25));
      document.getElementById('wider').addEventListener('click', () => this.seq.widen(1.25));
      document.getElementById('narrower').addEventListener('click', () => this.seq.widen(1 / 1.25));
      const tabs = model.kind === 'policy' ? [] : ['sequence', 'graph', 'stats'];
      if (model.campaign) tabs.unshift('campaign');
      if (model.policy) tabs.push('policy');
      const nav = document.getElementById('tabs');
      for (const name of tabs) nav.append(el('button', { type: 'button', 'data-tab': name, onclick: () => this.show(name) }, name));
      this.refresh();
      this.show(tabs[0]);
    }

    details() {
      // the full records, parsed on first use: a large trace paints without waiting for them
      if (!this.parsed) this.parsed = loadJSON('details') || [];
      return this.parsed;
    }

    setTrace(trace) {
      // another trace in the same views (a campaign's run); the filters stay as they are
      this.trace = trace;
      this.seq.trace = trace;
      this.seq.selected = -1;
      this.filters.trace = trace;
      this.filters.options();
      this.refresh();
    }

    showSeq(seq) {
      // the sequence diagram at the message numbered seq (a policy violation, a campaign's divergence)
      const c = this.trace.cols;
      let row = -1;
      for (let i = 0; i < this.trace.n; i++) if (c.seq[i] === seq) { row = i; break; }
      if (row < 0) return;
      if (this.seq.position(row) < 0) this.filters.reset();
      this.show('sequence');
      requestAnimationFrame(() => this.select(row, true));
    }

    refresh() {
      this.rows = this.filters.apply();
      this.seq.setRows(this.rows);
      this.dirty = { graph: true, stats: true };
      const shown = document.getElementById('shown');
      shown.textContent = 'showing ' + this.rows.length + ' of ' + this.trace.n + ' messages, ' + this.seq.lanes.length + ' lifelines';
      shown.dataset.messages = String(this.rows.length);
      shown.dataset.lifelines = String(this.seq.lanes.length);
      const sum = document.getElementById('summary');
      sum.textContent = this.model.kind === 'policy' ? 'policy' : (this.trace.n + ' messages · ' + this.trace.lifelines.length +
        ' components' + (this.trace.model.truncated ? ' · (cut: only the first ' + this.trace.n + ' messages)' : ''));
      sum.dataset.messages = String(this.trace.n);
      sum.dataset.lifelines = String(this.trace.lifelines.length);
      this.renderTab();
    }

    show(name) {
      this.tab = name;
      for (const b of document.querySelectorAll('#tabs button')) b.classList.toggle('active', b.dataset.tab === name);
      for (const v of document.querySelectorAll('.view')) v.hidden = v.id !== 'view-' + name;
      document.getElementById('filters').hidden = name === 'campaign' || name === 'policy';
      this.renderTab();
    }

    renderTab() {
      if (this.tab === 'sequence') this.seq.request();
      if (this.tab === 'graph' && this.dirty.graph) { this.dirty.graph = false; this.renderGraph(); }
      if (this.tab === 'stats' && this.dirty.stats) { this.dirty.stats = false; this.renderStats(); }
      if (this.tab === 'campaign' && !this.campaignView) this.campaignView = window.ipcCampaign(this);
      if (this.tab === 'policy' && !this.policyView) this.policyView = window.ipcPolicy(this);
    }

    renderGraph() {
      if (this.cy) this.cy.destroy();
      this.cy = drawGraph(document.getElementById('graph'), this.trace, this.rows,
        { onNode: (index) => this.filters.setComponent(index) });
    }

    renderStats() {
      const t = this.trace, { comps, pairs } = statsOf(t, this.rows);
      const compRows = [...comps.entries()].sort((a, b) => (b[1].counts.reduce((x, y) => x + y) + b[1].received) -
        (a[1].counts.reduce((x, y) => x + y) + a[1].received)).map(([l, x]) => ({ l, cells: [t.lifelines[l], ...x.counts,
        x.counts.reduce((p, q) => p + q), x.received, fmtBytes(x.bytes), fmtBytes(x.bytesIn), ...latencyCells(x.lat)] }));
      table(document.getElementById('stats-components'), ['component', 'calls', 'returns', 'errors', 'signals', 'data', 'sent',
        'recv', 'bytes out', 'bytes in', 'p50 ms', 'p90 ms', 'p99 ms'], compRows, (r) => this.filters.setComponent(r.l));
      const pairRows = [...pairs.values()].filter((p) => p.counts.some((n) => n)).sort((a, b) =>
        b.counts.reduce((x, y) => x + y) - a.counts.reduce((x, y) => x + y)).map((p) => ({ names: 2,
        cells: [t.lifelines[p.s], t.lifelines[p.d], ...p.counts, fmtBytes(p.bytes), ...latencyCells(p.lat)] }));
      table(document.getElementById('stats-pairs'), ['sender', 'destination', 'calls', 'returns', 'errors', 'signals', 'data',
        'bytes', 'p50 ms', 'p90 ms', 'p99 ms'], pairRows);
      const data = timelineData(t, this.rows, 120);
      const datasets = KIND_LABELS.map((label, k) => ({ label, data: data.sets[k], backgroundColor: KIND_COLORS[k], stack: 'm' }));
      if (this.chart) this.chart.destroy();
      this.chart = new Chart(document.getElementById('timeline'), {
        type: 'bar',
        data: { labels: data.labels, datasets },
        options: { animation: false, maintainAspectRatio: false, responsive: true,
          scales: { x: { stacked: true, title: { display: true, text: 's since the first message (bins of ' + fmtMs(data.width) + ' ms)' } },
            y: { stacked: true, title: { display: true, text: 'messages per bin' } } } },
      });
    }

    select(row, scroll) {
      this.seq.select(row);
      if (scroll) this.seq.scrollToRow(row);
      describe(this.trace, row, (other) => this.select(other, true));
    }

    grow(part, details) {
      // the live view: new rows (and, when names changed, everything again)
      if (part.start === 0) this.trace.reset(part, details); else this.trace.append(part, details);
      this.filters.options();
      const atEnd = this.seq.scroll.scrollTop + this.seq.scroll.clientHeight >= this.seq.scroll.scrollHeight - 4;
      this.refresh();
      if (atEnd) this.seq.scroll.scrollTop = this.seq.scroll.scrollHeight;
    }
  }

  window.ipcReportLib = { Trace, SeqView, drawGraph, describe, el, fmtBytes, fmtMs, shortName, KIND_LABELS, VERDICT_LABELS,
    VERDICT_COLORS };

  function start() {
    const model = loadJSON('model');
    if (!model) return;
    const app = new App(model);
    window.ipcReport = {
      app,
      counts: () => ({ messages: app.trace.n, lifelines: app.trace.lifelines.length, shown: app.rows.length,
        shownLifelines: app.seq.lanes.length }),
      lanes: () => app.seq.lanes.map((l) => app.trace.lifelines[l]),
      rowY: (pos) => app.seq.rowY(pos),
      scrollTo: (pos) => { app.seq.scroll.scrollTop = pos * app.seq.rowH; app.seq.render(); return app.seq.rowY(pos); },
      drawn: () => app.seq.drawn,
      graph: () => (app.cy ? { nodes: app.cy.nodes().length, edges: app.cy.edges().length } : null),
    };
    window.ipcCampaignView = () => app.campaignView;
    if (window.ipcLive) window.ipcLive(app);
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start); else start();
})();
