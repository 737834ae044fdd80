/* ipcproxy report: a fault campaign (ipcproxy.report.campaign): outcome table and chart, a faulty run beside
 * the golden run with the first divergence marked, the propagation path on the faulty run's component graph. */
(function () {
  'use strict';

  const OUTCOME_COLORS = {
    'not-activated': '#b0bec5', 'no-effect': '#66bb6a', handled: '#42a5f5', 'behaviour-shift': '#ffa726',
    'state-corruption': '#ab47bc', crash: '#e53935', hang: '#6d4c41',
  };

  function rowOfSeq(trace, seq) {
    // the first drawn message at or after seq (a divergence may name a record that is not an arrow)
    if (seq === null || seq === undefined) return -1;
    const s = trace.cols.seq;
    for (let i = 0; i < trace.n; i++) if (s[i] >= seq) return i;
    return -1;
  }

  function allRows(trace) {
    const rows = new Int32Array(trace.n);
    for (let i = 0; i < trace.n; i++) rows[i] = i;
    return rows;
  }

  window.ipcCampaign = function (app) {
    const L = window.ipcReportLib, el = L.el, model = app.model, c = model.campaign;
    const root = document.getElementById('view-campaign');
    const traces = model.traces.map((tm, i) => {
      const t = i === 0 ? app.trace : new L.Trace(tm, null);
      t.detailsSource = () => app.details()[i] || [];
      return t;
    });
    const outcomes = Object.keys(c.outcomes);
    const chartBox = el('div', { class: 'chart', style: 'height:150px;max-width:700px' }, el('canvas', { id: 'outcome-chart' }));
    root.append(el('h2', {}, 'Outcomes of ' + c.runs.length + ' runs'), chartBox);
    const chart = new Chart(chartBox.firstChild, {
      type: 'bar',
      data: { labels: outcomes, datasets: [{ label: 'runs', data: outcomes.map((o) => c.outcomes[o]),
        backgroundColor: outcomes.map((o) => OUTCOME_COLORS[o] || '#999') }] },
      options: { animation: false, maintainAspectRatio: false, plugins: { legend: { display: false } },
        scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } },
    });
    const table = el('table', { id: 'outcome-table' });
    root.append(el('h2', {}, 'Runs ', el('small', {}, '(click a run to compare it with the golden run)')), table);
    table.append(el('thead', {}, el('tr', {}, ...['run', 'fault', 'target', 'action', 'outcome', 'propagation',
      'first divergence'].map((h) => el('th', { class: 'name' }, h)))));
    const body = el('tbody');
    table.append(body);
    const compareTitle = el('h2', { id: 'compare-title' }, '');
    const left = pane('golden'), right = pane('faulty');
    const graphBox = el('div', { class: 'cgraph', id: 'propagation-graph' });
    root.append(compareTitle, el('div', { class: 'side-by-side' }, left.box, right.box),
      el('h2', {}, 'Propagation ', el('small', {}, '(components numbered nearest to the fault first)')), graphBox);
    let golden = null, faulty = null, cy = null;

    function pane(side) {
      const title = el('h3', {}, side);
      const canvas = el('canvas', {}), spacer = el('div', { class: 'spacer', style: 'position:absolute;top:0;left:0;width:1px' });
      const scroll = el('div', { class: 'mini', id: 'mini-' + side }, canvas, spacer);
      return { box: el('div', {}, title, scroll), title, canvas, spacer, scroll };
    }

    function view(p, trace) {
      const v = new L.SeqView(p.scroll, p.canvas, p.spacer, trace, { rowH: 20, laneW: 130,
        onSelect: (row) => L.describe(v.trace, row, (other) => { v.select(other); v.scrollToRow(other); }) });
      return v;
    }

    function compare(run) {
      for (const tr of body.children) tr.classList.toggle('selected', tr.dataset.run === String(run.run));
      const base = traces[0], trace = traces[run.trace];
      if (!trace) return;
      compareTitle.textContent = 'Run ' + run.run + ' (' + run.fault + ': ' + run.outcome + ') beside ' + c.golden;
      left.title.textContent = c.golden + (run.golden_divergence !== null ? ' — diverges at #' + run.golden_divergence : '');
      right.title.textContent = model.traces[run.trace].title + (run.faulty_divergence !== null ? ' — first divergence #' + run.faulty_divergence : '');
      if (!golden) golden = view(left, base);
      if (!faulty) faulty = view(right, trace);
      faulty.trace = trace;
      golden.mark = rowOfSeq(base, run.golden_divergence);
      faulty.mark = rowOfSeq(trace, run.faulty_divergence);
      golden.setRows(allRows(base));
      faulty.setRows(allRows(trace));
      if (golden.mark >= 0) golden.scrollToRow(golden.mark);
      if (faulty.mark >= 0) faulty.scrollToRow(faulty.mark);
      root.dataset.run = String(run.run);
      root.dataset.goldenMark = String(golden.mark >= 0 ? base.cols.seq[golden.mark] : '');
      root.dataset.faultyMark = String(faulty.mark >= 0 ? trace.cols.seq[faulty.mark] : '');
      if (cy) cy.destroy();
      cy = L.drawGraph(graphBox, trace, allRows(trace), { path: run.propagation });
      app.setTrace(trace);
    }

    for (const run of c.runs) {
      const tr = el('tr', { class: 'clickable', 'data-run': String(run.run) },
        el('td', {}, run.run), el('td', { class: 'name' }, run.fault), el('td', { class: 'name' }, run.target),
        el('td', { class: 'name' }, run.action),
        el('td', { class: 'name' }, el('span', { class: 'badge', style: 'background:' + (OUTCOME_COLORS[run.outcome] || '#999') }, run.outcome)),
        el('td', { class: 'name' }, run.propagation.length ? run.propagation.join(' → ') : '–'),
        el('td', {}, run.faulty_divergence === null ? '–' : '#' + run.faulty_divergence));
      tr.title = run.detail;
      tr.addEventListener('click', () => compare(run));
      body.append(tr);
    }
    const firstShown = c.runs.find((r) => r.outcome !== 'not-activated' && r.outcome !== 'no-effect') || c.runs[0];
    if (firstShown) requestAnimationFrame(() => compare(firstShown));
    return { chart, compare, graph: () => cy };
  };
})();
