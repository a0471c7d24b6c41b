// duly's only script. Every page works without it; it adds:
// - the browser's time zone in a cookie, so times are shown in the viewer's zone;
// - a confirmation before forms marked data-confirm (cancel, delete, send now);
// - live template previews (forms marked data-preview), see templates pages;
// - on phones, tables read as cards: each cell is given its column's name (data-label).
// - self-refreshing parts (data-refresh="URL" data-every="SECONDS"): the dashboard fetches
//   its live part again and swaps it in, while the tab is visible (without script the page
//   reloads itself through a <noscript> meta refresh).
(function () {
  "use strict";
  try {
    var tz = Intl.DateTimeFormat().resolvedOptions().timeZone;
    if (tz && document.cookie.indexOf("duly_tz=" + encodeURIComponent(tz)) === -1) {
      document.cookie = "duly_tz=" + encodeURIComponent(tz) + "; path=/; max-age=31536000; samesite=lax";
    }
  } catch (e) { /* no Intl: the server uses the rule file's zone */ }

  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    var msg = form.getAttribute && form.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) { ev.preventDefault(); }
  });

  // Live preview: a form with data-preview="URL" posts its fields there (debounced) and puts
  // the answer (an HTML fragment made by the server, escaped there) into #preview.
  function setupPreview(form) {
    var url = form.getAttribute("data-preview");
    var target = document.getElementById(form.getAttribute("data-preview-target") || "preview");
    if (!url || !target) { return; }
    var timer = null, seq = 0;
    function run() {
      var mine = ++seq;
      var body = new URLSearchParams(new FormData(form));
      var token = body.get("csrftoken") || "";
      target.setAttribute("aria-busy", "true");
      fetch(url, {method: "POST", body: body, credentials: "same-origin",
                  headers: {"x-csrftoken": token}})
        .then(function (r) { return r.text(); })
        .then(function (html) {
          if (mine !== seq) { return; }
          target.innerHTML = html;
          target.removeAttribute("aria-busy");
        })
        .catch(function () { target.removeAttribute("aria-busy"); });
    }
    form.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(run, 300);
    });
    form.addEventListener("change", function () { clearTimeout(timer); run(); });
  }
  // Cards: each cell of a table with a header row gets that column's name, and the table
  // the class "cards"; duly.css lays such tables out as cards below 600px wide.
  function labelCells(table) {
    var heads = table.querySelectorAll("thead th");
    if (heads.length < 2) { return; }
    var names = [];
    for (var h = 0; h < heads.length; h++) {
      var span = parseInt(heads[h].getAttribute("colspan") || "1", 10);
      for (var k = 0; k < span; k++) { names.push(heads[h].textContent.trim()); }
    }
    var rows = table.querySelectorAll("tbody tr");
    for (var r = 0; r < rows.length; r++) {
      var col = 0;
      for (var c = 0; c < rows[r].cells.length; c++) {
        var cell = rows[r].cells[c];
        if (!cell.hasAttribute("data-label")) { cell.setAttribute("data-label", names[col] || ""); }
        col += cell.colSpan || 1;
      }
    }
    table.classList.add("cards");
  }
  function setupRefresh(box) {
    var url = box.getAttribute("data-refresh");
    var every = parseInt(box.getAttribute("data-every"), 10);
    if (!url || !(every >= 5)) { return; }
    var busy = false;
    function refresh() {
      if (busy || document.hidden) { return; }
      // a form being filled in or a details box open: wait for the next round
      if (box.contains(document.activeElement) && document.activeElement !== document.body) { return; }
      busy = true;
      fetch(url, {credentials: "same-origin", headers: {"accept": "text/html"}})
        .then(function (r) {
          if (!r.ok || r.redirected) { throw new Error("status " + r.status); }
          return r.text();
        })
        .then(function (html) {
          var open = [];
          var ds = box.querySelectorAll("details");
          for (var i = 0; i < ds.length; i++) { if (ds[i].open) { open.push(i); } }
          box.innerHTML = html;  // made and escaped by the server
          var now = box.querySelectorAll("details");
          for (var j = 0; j < open.length; j++) { if (now[open[j]]) { now[open[j]].open = true; } }
          var fresh = box.querySelectorAll("table");
          for (var t = 0; t < fresh.length; t++) { labelCells(fresh[t]); }
          box.setAttribute("data-refreshed", String(Date.now()));
        })
        .catch(function () { /* keep what is shown; try again next round */ })
        .then(function () { busy = false; });
    }
    setInterval(refresh, every * 1000);
    document.addEventListener("visibilitychange", function () { if (!document.hidden) { refresh(); } });
  }
  document.addEventListener("DOMContentLoaded", function () {
    var tables = document.querySelectorAll("table");
    for (var t = 0; t < tables.length; t++) { labelCells(tables[t]); }
    var forms = document.querySelectorAll("form[data-preview]");
    for (var i = 0; i < forms.length; i++) { setupPreview(forms[i]); }
    var boxes = document.querySelectorAll("[data-refresh]");
    for (var k = 0; k < boxes.length; k++) { setupRefresh(boxes[k]); }
  });
})();
