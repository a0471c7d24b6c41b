// Template edit page: the variables list beside the editor. Without JavaScript the list is
// plain text to read; with it, clicking a name (or Enter on it) inserts "{{ name }}" at the
// cursor of the part last edited (the first part when none was), and the live preview
// (duly.js) follows as if it had been typed.
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    var areas = document.querySelectorAll("form[data-preview] textarea");
    if (!areas.length) { return; }
    var last = areas[0];
    for (var i = 0; i < areas.length; i++) {
      areas[i].addEventListener("focus", function (ev) { last = ev.target; });
    }
    function insert(text) {
      var start = last.selectionStart, end = last.selectionEnd;
      if (typeof start !== "number") { start = end = last.value.length; }
      last.value = last.value.slice(0, start) + text + last.value.slice(end);
      last.focus();
      last.selectionStart = last.selectionEnd = start + text.length;
      last.dispatchEvent(new Event("input", {bubbles: true}));
    }
    var vars = document.querySelectorAll("code.var[data-insert]");
    for (var j = 0; j < vars.length; j++) {
      var el = vars[j];
      el.setAttribute("role", "button");
      el.setAttribute("tabindex", "0");
      el.setAttribute("aria-label", "Insert " + el.getAttribute("data-insert"));
      el.classList.add("insertable");
      el.addEventListener("click", function (ev) {
        insert(ev.currentTarget.getAttribute("data-insert"));
      });
      el.addEventListener("keydown", function (ev) {
        if (ev.key === "Enter" || ev.key === " ") {
          ev.preventDefault();
          insert(ev.currentTarget.getAttribute("data-insert"));
        }
      });
    }
  });
})();
