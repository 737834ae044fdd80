/* ipcproxy report: the live view (`ipcproxy serve`): rows streamed by the server as the trace grows. */
(function () {
  'use strict';
  window.ipcLive = function (app) {
    if (!window.ipcLiveMode) return;
    const sum = document.getElementById('summary');
    const state = document.createElement('span');
    state.id = 'live-state';
    state.className = 'badge';
    state.style.background = '#78909c';
    state.style.marginLeft = '10px';
    state.textContent = 'connecting';
    sum.after(state);
    app.trace.details = app.trace.details || [];
    const events = new EventSource('events');
    events.addEventListener('rows', (ev) => {
      const data = JSON.parse(ev.data);
      app.grow(data.model, data.details);
      state.textContent = 'live';
      state.style.background = '#2e7d32';
      state.dataset.updates = String(+(state.dataset.updates || 0) + 1);
    });
    events.addEventListener('failed', (ev) => {
      state.textContent = 'stopped: ' + JSON.parse(ev.data);
      state.style.background = '#c62828';
      events.close();
    });
    events.onerror = () => { state.textContent = 'reconnecting'; state.style.background = '#ef6c00'; };
  };
})();
