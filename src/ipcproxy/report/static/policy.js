/* ipcproxy report: a policy (ipcproxy.report.policy) as a matrix component × peer, each cell opening the
 * member-level rules with their hit counts and the violations found in the trace. */
(function () {
  'use strict';

  function peerOfRule(rule) { return rule.peer || '*'; }

  window.ipcPolicy = function (app) {
    const L = window.ipcReportLib, el = L.el, p = app.model.policy;
    const root = document.getElementById('view-policy');
    const peers = new Set();
    for (const s of p.subjects) for (const r of s.rules) peers.add(peerOfRule(r));
    for (const v of p.violations) peers.add(v.peer);
    const peerList = [...peers].sort();
    const subjects = p.subjects.map((s) => s.component);
    for (const v of p.violations) if (!subjects.includes(v.component)) subjects.push(v.component);
    const cell = new Map();
    const at = (s, peer) => {
      const key = s + '\u0000' + peer;
      if (!cell.has(key)) cell.set(key, { rules: [], violations: [], hits: 0 });
      return cell.get(key);
    };
    for (const s of p.subjects) for (const r of s.rules) { const c = at(s.component, peerOfRule(r)); c.rules.push(r); c.hits += r.hits; }
    for (const v of p.violations) at(v.component, v.peer).violations.push(v);
    const checked = p.checked === null ? 'no trace checked: hits and violations need a trace (report TRACE --policy POLICY)'
      : p.checked + ' messages checked: ' + p.violations.length + ' violations, ' + p.anomalies.length + ' order anomalies';
    root.append(el('h2', {}, 'Policy ' + (p.source || '')), el('p', { id: 'policy-summary' }, checked +
      ' · components without a profile: ' + p.unknown));
    const table = el('table', { class: 'matrix', id: 'policy-matrix' });
    table.append(el('thead', {}, el('tr', {}, el('th', { class: 'name' }, 'component \\ peer'),
      ...peerList.map((peer) => el('th', {}, L.shortName(peer))))));
    const body = el('tbody');
    const detail = el('div', { id: 'policy-cell' });
    for (const s of subjects) {
      const tr = el('tr', {}, el('td', { class: 'name' }, s));
      for (const peer of peerList) {
        const c = cell.get(s + '\u0000' + peer);
        if (!c) { tr.append(el('td', { class: 'none' }, '·')); continue; }
        const text = c.rules.length + ' rules · ' + c.hits + ' hits' + (c.violations.length ? ' · ' + c.violations.length + ' violations' : '');
        const td = el('td', { class: c.violations.length ? 'viol' : c.hits ? 'hit' : '', 'data-subject': s, 'data-peer': peer,
          'data-hits': String(c.hits), 'data-violations': String(c.violations.length) }, text);
        td.style.cursor = 'pointer';
        td.addEventListener('click', () => show(s, peer, c));
        tr.append(td);
      }
      body.append(tr);
    }
    table.append(body);
    root.append(table, detail);

    function show(subject, peer, c) {
      const rules = el('table', { id: 'policy-rules' });
      rules.append(el('thead', {}, el('tr', {}, ...['direction', 'type', 'interface', 'member', 'path', 'rule', 'line', 'hits']
        .map((h) => el('th', { class: 'name' }, h)))));
      const rb = el('tbody');
      for (const r of c.rules) {
        rb.append(el('tr', {}, el('td', { class: 'name' }, r.direction), el('td', { class: 'name' }, r.type),
          el('td', { class: 'name' }, r.interface || '*'), el('td', { class: 'name' }, r.member || '*'),
          el('td', { class: 'name' }, r.path || '*'), el('td', { class: 'name' }, r.text), el('td', {}, r.line || ''),
          el('td', { class: r.hits ? '' : 'warn' }, r.hits)));
      }
      rules.append(rb);
      const viol = el('table', { id: 'policy-violations' });
      viol.append(el('thead', {}, el('tr', {}, ...['seq', 'member', 'kind', 'reason', 'rule that would allow it']
        .map((h) => el('th', { class: 'name' }, h)))));
      const vb = el('tbody');
      for (const v of c.violations) {
        const tr = el('tr', { class: 'clickable' }, el('td', {}, '#' + v.seq), el('td', { class: 'name' }, v.member || ''),
          el('td', { class: 'name bad' }, v.kind), el('td', { class: 'name' }, v.reason), el('td', { class: 'name' }, v.needed || ''));
        tr.addEventListener('click', () => app.showSeq(v.seq));
        vb.append(tr);
      }
      viol.append(vb);
      detail.replaceChildren(el('h2', {}, subject + ' ↔ ' + peer), rules,
        ...(c.violations.length ? [el('h2', {}, 'Violations ', el('small', {}, '(click one to see it in the sequence diagram)')), viol] : []));
    }
    return { show };
  };
})();
