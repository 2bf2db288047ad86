// The console's only script (the CSP allows no other): it refreshes the
// live part of a page and drives the "select all" box. Every page works
// without it, only without the live updates.
"use strict";

function refresh(el) {
  var url = el.getAttribute("data-refresh");
  var every = parseInt(el.getAttribute("data-every"), 10) || 2000;
  function tick() {
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) {
          // The session ended: go to the login form.
          window.location.assign("/console/login");
          return null;
        }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (html !== null && html !== undefined) {
          el.innerHTML = html;
          el.removeAttribute("data-stale");
        }
      })
      .catch(function () { el.setAttribute("data-stale", "1"); })
      .finally(function () { window.setTimeout(tick, every); });
  }
  window.setTimeout(tick, every);
}

document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("[data-refresh]").forEach(refresh);
  var all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", function () {
      document.querySelectorAll("input.pick").forEach(function (b) { b.checked = all.checked; });
    });
  }
});
