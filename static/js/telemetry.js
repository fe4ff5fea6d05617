/* GPU and server telemetry charts on the run page (templates/sweeps/_telemetry.html).
 *
 * Reads each level's `gpu`, `server`, `timeseries` and `telemetry_notes` sections from the JSON the
 * template put under #telemetry-data, and draws, for the level chosen in #telemetry-level:
 *   - GPU utilization and SM activity (per GPU) beside requests/s and requests in flight,
 *   - SM clock and power (per GPU),
 *   - VRAM used (per GPU) beside requests in flight,
 *   - the server's queue depth and running requests beside requests in flight,
 * and, across levels, the server's queue depth per level. Time is seconds from the start of the
 * level's measured window, the same clock for the GPU readings and the per-second request figures.
 * Requires Chart.js (global `Chart`) and charts.js (palette and number format), loaded before this file.
 */
(function () {
  "use strict";

  var color = window.EmbperfCharts.color;
  var fmt = window.EmbperfCharts.fmt;
  var charts = {};

  function readLevels(root) {
    var levels = [];
    root.querySelectorAll("[data-index]").forEach(function (el) {
      var level = { index: Number(el.dataset.index), load: Number(el.dataset.load) };
      el.querySelectorAll("[data-part]").forEach(function (part) {
        var script = part.querySelector("script");
        level[part.dataset.part] = script ? JSON.parse(script.textContent) : null;
      });
      levels.push(level);
    });
    return levels;
  }

  function gpuKey(point) {
    return (point.source ? point.source + " " : "") + point.gpu;
  }

  function gpuLabel(key, several) {
    return several ? "GPU " + key : "GPU";
  }

  // {key: [points]} of one level's GPU time series, one entry per GPU
  function byGpu(gpu) {
    var out = {};
    ((gpu && gpu.timeseries) || []).forEach(function (p) {
      var k = gpuKey(p);
      (out[k] = out[k] || []).push(p);
    });
    return out;
  }

  function series(points, field, scale) {
    return points
      .filter(function (p) { return p[field] !== null && p[field] !== undefined; })
      .map(function (p) { return { x: p.t, y: p[field] * (scale || 1) }; });
  }

  function dataset(label, data, colorIndex, axis, dashed) {
    var c = color(colorIndex);
    return {
      label: label, data: data, yAxisID: axis, borderColor: c, backgroundColor: c, borderWidth: 2,
      borderDash: dashed ? [6, 4] : [], pointRadius: 0, pointHoverRadius: 4, tension: 0.2, spanGaps: true,
    };
  }

  function axis(title, position, max, grid) {
    var a = {
      type: "linear", position: position, beginAtZero: true, display: "auto",
      title: { display: !!title, text: title || "" },
      grid: { display: grid !== false, color: "#eef0f3" },
      ticks: { callback: function (v) { return fmt(v); } },
    };
    if (max !== undefined && max !== null) a.max = max;
    return a;
  }

  function draw(id, datasets, opts) {
    var canvas = document.getElementById("telemetry-" + id + "-canvas");
    if (!canvas || !window.Chart) return;
    if (charts[id]) charts[id].destroy();
    var scales = {
      x: {
        type: opts.category ? "category" : "linear",
        title: { display: true, text: opts.xTitle || "Time in the measured window (s)" },
        grid: { color: "#f3f4f6" },
      },
      y: axis(opts.yTitle, "left", opts.yMax),
    };
    if (opts.category) scales.x.labels = opts.labels;
    if (opts.y2Title) scales.y2 = axis(opts.y2Title, "right", null, false);
    charts[id] = new window.Chart(canvas, {
      type: "line",
      data: { datasets: datasets },
      options: {
        responsive: true, maintainAspectRatio: false, animation: false, parsing: true,
        interaction: { mode: "nearest", axis: "x", intersect: false },
        plugins: {
          legend: { position: "bottom", labels: { boxWidth: 12, usePointStyle: true } },
          tooltip: {
            callbacks: {
              title: function (items) { return items.length && !opts.category ? "t = " + fmt(items[0].parsed.x) + " s" : undefined; },
              label: function (ctx) { return ctx.dataset.label + ": " + fmt(ctx.parsed.y); },
            },
          },
        },
        scales: scales,
      },
    });
  }

  // requests/s and in flight from the level's own per-second time series (t = end of each second)
  function requestSeries(level) {
    var ts = level.timeseries || [];
    return {
      rps: ts.map(function (s) { return { x: s.t, y: s.completed }; }),
      inFlight: ts.filter(function (s) { return s.in_flight !== null && s.in_flight !== undefined; })
        .map(function (s) { return { x: s.t, y: s.in_flight }; }),
    };
  }

  function show(name, visible) {
    var el = document.querySelector('[data-telemetry-chart="' + name + '"]');
    if (el) el.hidden = !visible;
  }

  function drawLevel(level) {
    var gpus = byGpu(level.gpu);
    var keys = Object.keys(gpus);
    var several = keys.length > 1;
    var req = requestSeries(level);
    var util = [], clock = [], memory = [];
    keys.forEach(function (k, i) {
      var pts = gpus[k], name = gpuLabel(k, several), c = i * 2;
      util.push(dataset(name + " utilization (%)", series(pts, "util"), c, "y", false));
      var sm = series(pts, "sm_active");
      if (sm.length) util.push(dataset(name + " SM activity (%)", sm, c + 1, "y", true));
      clock.push(dataset(name + " SM clock (MHz)", series(pts, "sm_clock_mhz"), c, "y", false));
      clock.push(dataset(name + " power (W)", series(pts, "power_w"), c + 1, "y2", true));
      memory.push(dataset(name + " used (GiB)", series(pts, "mem_used_mib", 1 / 1024), c, "y", false));
    });
    var hasGpu = keys.length > 0;
    show("util", hasGpu);
    show("clock", hasGpu);
    show("memory", hasGpu);
    if (hasGpu) {
      draw("util", util.concat([
        dataset("Requests/s", req.rps, 4, "y2", false),
        dataset("In flight", req.inFlight, 5, "y2", true),
      ]), { yTitle: "%", yMax: 100, y2Title: "Requests/s · in flight" });
      draw("clock", clock, { yTitle: "SM clock (MHz)", y2Title: "Power (W)" });
      draw("memory", memory.concat([dataset("In flight", req.inFlight, 5, "y2", true)]),
        { yTitle: "Memory used (GiB)", y2Title: "Requests in flight" });
    }
    var server = level.server;
    var sts = (server && server.timeseries) || [];
    show("server", sts.length > 0);
    if (sts.length) {
      var sets = [dataset("Queue depth", series(sts, "queue_depth"), 1, "y", false)];
      var running = series(sts, "running");
      if (running.length) sets.push(dataset("Running", running, 0, "y", false));
      sets.push(dataset("Client in flight", req.inFlight, 5, "y", true));
      draw("server", sets, { yTitle: "Requests" });
    }
    var notes = document.getElementById("telemetry-level-notes");
    if (notes) {
      notes.textContent = "";
      (level.notes || []).forEach(function (text) {
        var li = document.createElement("li");
        li.textContent = text;
        notes.appendChild(li);
      });
    }
  }

  function drawQueuePerLevel(levels, loadLabel) {
    var withServer = levels.filter(function (l) { return l.server; });
    show("queue-levels", withServer.length > 0);
    if (!withServer.length) return;
    var labels = withServer.map(function (l) { return fmt(l.load); });
    function per(field, stat) {
      return withServer.map(function (l, i) {
        var v = l.server[field] ? l.server[field][stat] : null;
        return { x: labels[i], y: v };
      });
    }
    var sets = [
      dataset("Queue depth mean", per("queue_depth", "mean"), 1, "y", false),
      dataset("Queue depth max", per("queue_depth", "max"), 1, "y", true),
    ];
    if (withServer.some(function (l) { return l.server.running && l.server.running.mean !== null; })) {
      sets.push(dataset("Running mean", per("running", "mean"), 0, "y", false));
    }
    sets.forEach(function (s) { s.pointRadius = 3; });
    draw("queue-levels", sets, { category: true, labels: labels, xTitle: loadLabel, yTitle: "Requests" });
  }

  function init() {
    var root = document.getElementById("telemetry-data");
    if (!root || !window.Chart) return;
    var levels = readLevels(root);
    if (!levels.length) return;
    var select = document.getElementById("telemetry-level");
    function current() {
      var index = select ? Number(select.value) : levels[levels.length - 1].index;
      return levels.filter(function (l) { return l.index === index; })[0] || levels[levels.length - 1];
    }
    drawLevel(current());
    drawQueuePerLevel(levels, root.dataset.loadLabel || "Load");
    if (select) select.addEventListener("change", function () { drawLevel(current()); });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
