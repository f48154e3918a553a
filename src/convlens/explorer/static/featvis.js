// convlens explorer: the feature-visualization panel of a unit page. "Compute" posts to the server
// (same origin), then the panel polls its JSON until the image is in the run and puts it in place.
(function () {
  "use strict";
  var WAITING = {queued: true, running: true};

  function fill(panel, d) {
    panel.setAttribute("data-state", d.state);
    panel.querySelector(".fv-body").innerHTML = d.html;
    bind(panel);
  }

  function fail(panel, text) {
    var body = panel.querySelector(".fv-body");
    var p = document.createElement("p");
    p.className = "warn";
    p.textContent = text;
    body.prepend(p);
    var b = body.querySelector("button"); if (b) { b.disabled = false; }
  }

  function poll(panel) {
    fetch(panel.getAttribute("data-url"), {cache: "no-store", headers: {"Accept": "application/json"}})
      .then(function (r) { return r.json(); }).then(function (d) {
        fill(panel, d);
      }).catch(function () { window.setTimeout(function () { poll(panel); }, 2000); });
  }

  function bind(panel) {
    var form = panel.querySelector("form.fv-compute");
    if (form) {
      form.addEventListener("submit", function (ev) {
        ev.preventDefault();
        var b = form.querySelector("button"); if (b) { b.disabled = true; }
        fetch(form.action, {method: "POST", cache: "no-store", headers: {"Accept": "application/json"}})
          .then(function (r) { return r.json().then(function (d) { return {ok: r.ok, d: d}; }); })
          .then(function (x) { if (x.ok) { fill(panel, x.d); } else { fail(panel, x.d.error || "refused"); } })
          .catch(function () { fail(panel, "The server did not answer; try again."); });
      });
    }
    if (WAITING[panel.getAttribute("data-state")]) { window.setTimeout(function () { poll(panel); }, 1000); }
  }

  document.addEventListener("DOMContentLoaded", function () {
    var panel = document.getElementById("featvis");
    if (panel) { bind(panel); }
  });
}());
