/* A running run on its page: follows it through its progress endpoint (every 1.5 s) and draws
 * the live per-second chart, the progress bar, the results table and the charts against load.
 * When the run reaches a final state the page reloads once to show the finished run as stored. */
(function () {
  "use strict";
  var script = document.currentScript;
  var progressUrl = script.dataset.progressUrl;
  var isFinal = script.dataset.final === "1";
  var loadLabel = script.dataset.loadLabel || "Concurrency";
  var POLL_MS = 1500;
  var C = window.EmbperfCharts;

  var PHASES = {
    starting: "starting",
    probe: "probing the target",
    calibrate: "calibrating inputs",
    warmup: "warming up",
    measure: "measuring",
    drain: "waiting for in-flight requests",
  };

  var charts = { qps: null, latency: null, live: null };
  var shownLevels = -1;

  function $(id) { return document.getElementById(id); }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || isNaN(seconds)) return "–";
    var s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + " s";
    var m = Math.floor(s / 60);
    if (m < 60) return m + " min " + String(s % 60).padStart(2, "0") + " s";
    return Math.floor(m / 60) + " h " + String(m % 60).padStart(2, "0") + " min";
  }

  function drawLevels(rows) {
    if (!rows.length || !$("qps-chart")) return;
    $("level-charts").hidden = false;
    var labels = rows.map(function (r) { return C.fmt(r.load); });
    var pick = function (key) { return rows.map(function (r) { return r[key]; }); };
    if (!charts.qps) {
      charts.qps = C.line($("qps-chart"), {
        labels: labels, xTitle: loadLabel, yTitle: "requests/s", y2Title: "tokens/s",
        series: [
          { label: "Requests/s", data: pick("qps") },
          { label: "Tokens/s", data: pick("tokens_per_s"), axis: "y2", dashed: true, color: C.color(2) },
        ],
      });
      charts.latency = C.line($("latency-chart"), {
        labels: labels, xTitle: loadLabel, yTitle: "latency (ms)",
        series: [
          { label: "p50", data: pick("latency_p50_ms"), color: C.color(2) },
          { label: "p90", data: pick("latency_p90_ms"), color: C.color(4) },
          { label: "p99", data: pick("latency_p99_ms"), color: C.color(1) },
          { label: "mean", data: pick("latency_mean_ms"), dashed: true, color: C.color(3) },
        ],
      });
    } else {
      C.update(charts.qps, labels, [pick("qps"), pick("tokens_per_s")]);
      C.update(charts.latency, labels,
        [pick("latency_p50_ms"), pick("latency_p90_ms"), pick("latency_p99_ms"), pick("latency_mean_ms")]);
    }
  }

  function drawLive(recent) {
    var canvas = $("live-chart");
    if (!canvas) return;
    // One point per measured second: label it with its level's load and its second in that level.
    var short = loadLabel === "Concurrency" ? "c=" : "rate ";
    var labels = recent.map(function (p) {
      return short + C.fmt(p.load) + " · " + (p.t < 0 ? "warm-up" : Math.round(p.t) + " s");
    });
    var rps = recent.map(function (p) { return p.completed; });
    var p99 = recent.map(function (p) { return p.p99_ms; });
    if (!charts.live) {
      charts.live = C.line(canvas, {
        labels: labels, yTitle: "requests/s", y2Title: "p99 (ms)", points: false, animate: false, tension: 0,
        series: [
          { label: "Requests/s (per second)", data: rps },
          { label: "p99 latency (ms)", data: p99, axis: "y2", color: C.color(1) },
        ],
      });
    } else {
      C.update(charts.live, labels, [rps, p99]);
    }
  }

  function showProgress(state) {
    var p = state.progress || {};
    var total = p.levels_total || state.levels_total || 0;
    var fraction = 0;
    if (p.run_eta_s !== undefined && p.run_eta_s !== null && p.run_elapsed_s) {
      fraction = p.run_elapsed_s / (p.run_elapsed_s + p.run_eta_s);
    } else if (total && p.level_index !== undefined && p.level_index !== null) {
      var within = p.level_total_s ? Math.min(1, (p.level_elapsed_s || 0) / p.level_total_s) : 0;
      fraction = (p.level_index + within) / total;
    }
    var percent = Math.max(0, Math.min(100, fraction * 100));
    $("progress-bar").style.width = percent.toFixed(1) + "%";
    $("progress").setAttribute("aria-valuenow", percent.toFixed(0));

    if (p.level_index !== undefined && p.level_index !== null) {
      $("progress-level").textContent = "Level " + (p.level_index + 1) + " of " + total +
        (p.load !== undefined && p.load !== null ? " · " + loadLabel.toLowerCase() + " " + C.fmt(p.load) : "");
    }
    // The words beside the bar follow the status the badge shows: a queued run says where it waits
    // (another run of the same target, or its place in the queue); a running one, its phase, or
    // "starting" until the worker reports one, never the queue text it had while queued.
    if (state.status === "queued") {
      $("progress-phase").textContent = state.status_reason || state.queue_text || "";
    } else if (state.cancel_requested) {
      $("progress-phase").textContent = "cancelling…";
    } else {
      $("progress-phase").textContent = PHASES[p.phase] || p.phase || PHASES.starting;
    }
    var elapsed = p.run_elapsed_s;
    if ((elapsed === undefined || elapsed === null) && state.started) {
      elapsed = (Date.now() - Date.parse(state.started)) / 1000;
    }
    $("progress-elapsed").textContent = duration(elapsed);
    $("progress-remaining").textContent = duration(p.run_eta_s);
    drawLive(p.recent || []);
  }

  function apply(state) {
    if (state.is_final) {
      // Show the stored, finished run (summary, reason) as the server renders it.
      window.location.reload();
      return;
    }
    var badge = $("run-status");
    badge.className = "badge badge-" + state.status;
    badge.textContent = state.status_display;
    if (state.status !== "queued") {
      // "Run queued" banners from the start no longer hold.
      document.querySelectorAll('.message[data-tags~="while-queued"]').forEach(function (m) { m.remove(); });
    }
    if (state.cancel_requested && $("cancel-button")) {
      $("cancel-button").disabled = true;
      $("cancel-button").textContent = "Cancelling…";
    }
    if (state.started_display) $("run-started").textContent = state.started_display;
    if (state.worker_host) $("run-worker").textContent = state.worker_host;
    // The worker's heartbeat: how long since it last reported, and whether it has gone silent.
    if ($("run-heartbeat") && state.heartbeat_age_s !== null && state.heartbeat_age_s !== undefined) {
      $("run-heartbeat").textContent = Math.round(state.heartbeat_age_s) + " s ago" +
        (state.worker_silent ? " (worker silent: it probably died; any running worker marks the run interrupted, or cancel it)" : "");
    }
    if ($("waiting-note")) {
      $("waiting-note").hidden = !state.waiting_note;
      $("waiting-note").textContent = state.waiting_note || "";
    }
    if (state.levels !== null) {
      $("results").innerHTML = state.results_html;
      shownLevels = state.levels.length;
      drawLevels(state.levels);
    }
    showProgress(state);
    setTimeout(poll, POLL_MS);
  }

  function poll() {
    var url = progressUrl + (shownLevels >= 0 ? "?levels=" + shownLevels : "");
    fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(apply)
      .catch(function () { setTimeout(poll, POLL_MS * 2); });
  }

  var initial = JSON.parse($("levels-data").textContent);
  shownLevels = initial.length;
  drawLevels(initial);
  if (!isFinal) poll();
})();
