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
    document.querySelectorAll("img").forEach(sharpenIfUpscaled);
    var projecting = document.getElementById("projecting");
    if (projecting) { fetchProjections(projecting); }
  });

  // Nearest-neighbour rendering only where an image is shown larger than it was made (a tiny map
  // upscaled); anything shown at or below its size is left to the browser's smooth scaling.
  function sharpenIfUpscaled(img) {
    var check = function () {
      img.style.imageRendering = (img.naturalWidth > 0 && img.naturalWidth < img.clientWidth) ? "pixelated" : "";
    };
    if (img.complete) { check(); } else { img.addEventListener("load", check); }
  }

  // A unit page whose projections were not made by `convlens mine`: ask the server to make them
  // (once; it keeps them in the run) and put them in place, without a reload.
  function fetchProjections(note) {
    fetch(note.getAttribute("data-url"), {cache: "no-store"}).then(function (r) { return r.json(); }).then(function (d) {
      if (d.error) { note.className = "warn"; note.textContent = "No projections: " + d.error; return; }
      d.entries.forEach(function (e, i) {
        [["proj", e.projection], ["patch", e.patch]].forEach(function (pair) {
          var slot = document.querySelector('[data-slot="' + pair[0] + "-" + i + '"]');
          if (!slot || !pair[1]) { return; }
          var img = document.createElement("img");
          img.className = pair[0];
          img.alt = slot.getAttribute("data-alt") || "";
          img.src = pair[1];
          sharpenIfUpscaled(img);
          slot.replaceWith(img);
        });
      });
      note.id = "projected";
      note.textContent = d.computed ? "Projected on this first view in " + d.seconds + " s; kept in the run for the next visits."
        : "Projections found in the run.";
    }).catch(function () { note.className = "warn"; note.textContent = "Projecting failed; see the server log."; });
  }
}());
