// convlens explorer: keyboard navigation, upload progress, polling of a running analysis. No network
// resource beyond this server.
(function () {
  "use strict";
  function link(rel) { return document.querySelector('a[rel="' + rel + '"]'); }
  document.addEventListener("keydown", function (ev) {
    var t = ev.target;
    if (ev.altKey || ev.ctrlKey || ev.metaKey || (t && /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName))) { return; }
    var target = null;
    if (ev.key === "ArrowRight" || ev.key === "j") { target = link("next"); }
    else if (ev.key === "ArrowLeft" || ev.key === "k") { target = link("prev"); }
    else if (ev.key === "/" || ev.key === "g") {
      var box = document.querySelector("form.jump input");
      if (box) { ev.preventDefault(); box.focus(); }
      return;
    }
    if (target) { ev.preventDefault(); window.location.href = target.href; }
  });
  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("upload");
    if (form) {
      form.addEventListener("submit", function () {
        var p = document.getElementById("upload-progress");
        if (p) { p.hidden = false; }
        var b = form.querySelector("button"); if (b) { b.disabled = true; }
      });
    }
    var pending = document.getElementById("pending");
    if (pending) {
      var url = pending.getAttribute("data-status");
      var bar = document.getElementById("job-progress");
      var stage = document.getElementById("job-stage");
      var poll = function () {
        fetch(url, {cache: "no-store"}).then(function (r) { return r.json(); }).then(function (s) {
          if (bar) { bar.value = s.fraction; }
          if (stage) { stage.textContent = s.stage + " (" + s.seconds + " s)"; }
          if (s.state === "done" || s.state === "failed") { window.location.reload(); }
          else { window.setTimeout(poll, 400); }
        }).catch(function () { window.setTimeout(poll, 1500); });
      };
      window.setTimeout(poll, 300);
    }
  });
}());
