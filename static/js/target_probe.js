// The target page's "Test connection": post the probe, then poll its result until it is in.
(function () {
  "use strict";
  var box = document.getElementById("probe-result");
  var form = document.getElementById("probe-form");
  var button = document.getElementById("probe-button");
  var timer = null;

  function show(state) {
    box.innerHTML = state.html;
    button.disabled = !!state.pending;
    if (state.pending) { timer = setTimeout(poll, 1000); }
  }
  function poll() {
    fetch(box.dataset.url, { headers: { "Accept": "application/json" }, credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(show)
      .catch(function () { timer = setTimeout(poll, 3000); });
  }
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    button.disabled = true;
    clearTimeout(timer);
    fetch(form.action, {
      method: "POST", body: new FormData(form), credentials: "same-origin",
      headers: { "Accept": "application/json" },
    }).then(function (r) {
      if (r.status === 429) {  // throttled: say so, and let the user try again later
        return r.json().then(function (state) { box.innerHTML = state.html; button.disabled = false; });
      }
      poll();
    }).catch(function () { form.submit(); });
  });
  if (box.querySelector("[data-probe-pending]")) { button.disabled = true; timer = setTimeout(poll, 1000); }
})();
