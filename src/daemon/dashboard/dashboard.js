// banger dashboard: keeps a server-rendered page current from the event log, and runs the
// confirmed actions on a VM. No framework, no build step: served as it is by bangerd.
//
// Live updates: one EventSource on /stream, starting after the sequence number the page was
// rendered at (body[data-seq]). The browser reconnects by itself when bangerd restarts and
// sends the last id it saw (Last-Event-ID), so the stream resumes with the next event: no
// gap, no duplicate; if the log no longer has that event (a repaired log), the stream says
// `reset` and the page reloads. A "refresh" page fetches its own ?fragment=1 again after events (at
// most one fetch at a time, coalesced); the event page appends a row per event. Text from
// the server is only ever set with textContent here; fragments are server-rendered, escaped
// HTML.
'use strict';

(function () {
  const MAX_EVENT_ROWS = 1000;
  const REFRESH_DELAY_MS = 100;

  const body = document.body;
  const main = document.getElementById('content');
  const live = document.getElementById('live');
  const flash = document.getElementById('flash');
  const mode = body.dataset.live;

  function setLive(text, state) {
    live.textContent = text;
    live.dataset.state = state;
  }

  function say(text, isError) {
    flash.textContent = text;
    flash.hidden = false;
    flash.classList.toggle('error', Boolean(isError));
  }

  // ---- refreshing the page's fragment --------------------------------------------------

  let refreshTimer = null;
  let refreshing = false;
  let refreshAgain = false;

  function scheduleRefresh() {
    if (mode !== 'refresh' || refreshTimer !== null) {
      return;
    }
    refreshTimer = setTimeout(refresh, REFRESH_DELAY_MS);
  }

  async function refresh() {
    refreshTimer = null;
    // Swapping the content would close a confirmation someone is reading: wait for it.
    if (document.querySelector('dialog[open]')) {
      refreshAgain = true;
      return;
    }
    if (refreshing) {
      refreshAgain = true;
      return;
    }
    refreshing = true;
    try {
      const url = new URL(location.href);
      url.searchParams.set('fragment', '1');
      const response = await fetch(url, { credentials: 'same-origin', cache: 'no-store' });
      if (response.status === 401) {
        setLive('signed out', 'closed');
      } else {
        // A VM that was deleted answers 404 with a fragment that says so.
        main.innerHTML = await response.text();
        body.dataset.refreshed = String(Number(body.dataset.refreshed || 0) + 1);
      }
    } catch (error) {
      // bangerd is restarting; the stream's reconnection brings the next refresh.
    } finally {
      refreshing = false;
      if (refreshAgain) {
        refreshAgain = false;
        scheduleRefresh();
      }
    }
  }

  // ---- the event page ------------------------------------------------------------------

  // Newest last, so the page follows the end of the log while the reader is there, and
  // stays put when they scrolled up to read.
  function atBottom() {
    return window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 40;
  }

  function appendEvent(row) {
    const table = document.getElementById('events-body');
    if (!table) {
      return;
    }
    const follow = atBottom();
    const tr = document.createElement('tr');
    tr.dataset.seq = String(row.seq);
    const cells = [row.seq, row.time, row.op || '-', row.event, row.summary];
    cells.forEach(function (value, index) {
      const td = document.createElement('td');
      if (index === 0) {
        td.className = 'num';
      }
      if (index === 1) {
        td.className = 'time';
      }
      if (index === 2) {
        const code = document.createElement('code');
        code.textContent = String(value);
        td.appendChild(code);
      } else {
        td.textContent = String(value);
      }
      tr.appendChild(td);
    });
    table.appendChild(tr);
    while (table.rows.length > MAX_EVENT_ROWS) {
      table.deleteRow(0);
    }
    if (follow) {
      window.scrollTo(0, document.documentElement.scrollHeight);
    }
  }

  if (mode === 'append') {
    window.scrollTo(0, document.documentElement.scrollHeight);
  }

  // ---- the stream ----------------------------------------------------------------------

  const source = new EventSource('/stream?after=' + encodeURIComponent(body.dataset.seq || '0'));
  let wasDown = false;
  source.addEventListener('envelope', function (message) {
    const row = JSON.parse(message.data);
    body.dataset.lastSeq = String(row.seq);
    if (mode === 'append') {
      appendEvent(row);
    }
    scheduleRefresh();
  });
  // The log no longer continues what this page showed (it was repaired or replaced): only a
  // fresh page can show it as it is.
  source.addEventListener('reset', function () {
    source.close();
    setLive('the log changed: reloading', 'closed');
    location.reload();
  });
  source.addEventListener('open', function () {
    setLive('live', 'open');
    if (wasDown) {
      wasDown = false;
      scheduleRefresh();
    }
  });
  source.addEventListener('error', function () {
    if (source.readyState === EventSource.CLOSED) {
      // Refused (signed out, or too many pages): the browser will not try again.
      setLive('disconnected: reload the page', 'closed');
    } else {
      wasDown = true;
      setLive('reconnecting…', 'reconnecting');
    }
  });

  // ---- actions -------------------------------------------------------------------------

  document.addEventListener('click', function (event) {
    const opener = event.target.closest('[data-dialog]');
    if (opener && !opener.disabled) {
      const dialog = document.getElementById(opener.dataset.dialog);
      if (dialog) {
        dialog.showModal();
      }
      return;
    }
    const closer = event.target.closest('[data-close]');
    if (closer) {
      const dialog = closer.closest('dialog');
      if (dialog) {
        dialog.close();
      }
    }
  });

  // A refresh held back while a confirmation was open happens once it closes (Cancel,
  // Escape or a submit). `close` does not bubble, hence the capture.
  document.addEventListener('close', function () {
    if (refreshAgain) {
      refreshAgain = false;
      scheduleRefresh();
    }
  }, true);

  document.addEventListener('submit', async function (event) {
    const form = event.target;
    if (!form.matches('form.action')) {
      return;
    }
    event.preventDefault();
    const dialog = form.closest('dialog');
    if (dialog) {
      dialog.close();
    }
    const what = form.dataset.what;
    say(what + ': running…', false);
    try {
      const response = await fetch(form.action, {
        method: 'POST',
        body: new URLSearchParams(new FormData(form)),
        credentials: 'same-origin',
      });
      if (response.ok) {
        say(what + ': done', false);
        if (response.redirected && new URL(response.url).pathname !== location.pathname) {
          location.assign(response.url);
          return;
        }
      } else {
        const page = new DOMParser().parseFromString(await response.text(), 'text/html');
        const error = page.getElementById('error');
        say(what + ': ' + (error ? error.textContent : response.statusText), true);
      }
    } catch (error) {
      say(what + ': ' + error, true);
    }
    scheduleRefresh();
  });
})();
