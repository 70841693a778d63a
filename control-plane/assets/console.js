// The console's live parts, plain DOM: regions marked `data-live` refresh every few seconds
// from the same page's HTML (what the server renders is what updates), and forms or buttons
// with `data-confirm` ask before they act.
(function () {
  "use strict";
  var live = document.querySelectorAll("[data-live]");
  if (live.length) {
    var every = Number(document.body.getAttribute("data-refresh") || "3000");
    var busy = false;
    setInterval(function () {
      if (busy || document.hidden) return;
      busy = true;
      fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) {
          if (r.redirected || !r.ok) throw new Error("status " + r.status);
          return r.text();
        })
        .then(function (text) {
          var doc = new DOMParser().parseFromString(text, "text/html");
          document.querySelectorAll("[data-live]").forEach(function (el) {
            var fresh = el.id && doc.getElementById(el.id);
            if (fresh && fresh.innerHTML !== el.innerHTML) el.innerHTML = fresh.innerHTML;
          });
          document.body.setAttribute("data-updated", String(Date.now()));
        })
        .catch(function () {})
        .then(function () { busy = false; });
    }, every);
  }
  document.addEventListener("submit", function (e) {
    var msg = e.target.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) e.preventDefault();
  });
})();
