// Progress bars drawn from their data-percent (the page's policy allows no inline styles).
(function () {
  "use strict";
  document.querySelectorAll(".progress-bar[data-percent]").forEach(function (bar) {
    var percent = parseFloat(bar.dataset.percent);
    if (isFinite(percent)) { bar.style.width = Math.max(0, Math.min(100, percent)) + "%"; }
  });
})();
