/* The result charts of the run, compare and history pages, and their sharing buttons.
 *
 * Reads the chart specifications the server put in <script id="result-charts" type="application/json">
 * (built by portal/front/charts.py for the run page, portal/history/charts.py for compare and history)
 * and draws each on the canvas "<id>-canvas":
 *   {id, title, x: {title, log, ticks: "percentile"|"runs"|null, max}, axes: [{id, title, position, max}],
 *    datasets: [{label, axis, color, dashed, data: [{x, y}]}], runs: [...], variants: {key: {label, datasets}}}
 * Also wires the "PNG" buttons, the level selectors, "Copy as Markdown table" and "Copy permalink".
 * The text last copied is mirrored into a hidden <output id="copied-text"> so it can be checked.
 * Requires Chart.js and charts.js (palette and number format), loaded before this file.
 */
(function () {
  "use strict";

  var color = window.EmbperfCharts.color;
  var fmt = window.EmbperfCharts.fmt;
  var BAD = "#b91c1c";
  var charts = {};

  // PNG downloads get a white background instead of a transparent one.
  var whiteBackground = {
    id: "whiteBackground",
    beforeDraw: function (chart) {
      var ctx = chart.ctx;
      ctx.save();
      ctx.globalCompositeOperation = "destination-over";
      ctx.fillStyle = "#ffffff";
      ctx.fillRect(0, 0, chart.width, chart.height);
      ctx.restore();
    },
  };

  // History charts: a shaded band per segment and level (the spread of its repeated runs) under the
  // lines, and a dashed vertical line with "config" where the configuration changed.
  var segmentMarks = {
    id: "segmentMarks",
    beforeDatasetsDraw: function (chart) {
      var spec = chart.$spec;
      if (!spec || !spec.bands || !spec.bands.length) return;
      var x = chart.scales.x, y = chart.scales.y, area = chart.chartArea, ctx = chart.ctx;
      ctx.save();
      ctx.beginPath();
      ctx.rect(area.left, area.top, area.right - area.left, area.bottom - area.top);
      ctx.clip();
      spec.bands.forEach(function (b) {
        var x0 = x.getPixelForValue(b.from), x1 = x.getPixelForValue(b.to);
        var top = y.getPixelForValue(b.high), bottom = y.getPixelForValue(b.low);
        ctx.globalAlpha = 0.14;
        ctx.fillStyle = color(b.color);
        ctx.fillRect(x0, top, x1 - x0, Math.max(bottom - top, 1.5));
      });
      ctx.restore();
    },
    afterDatasetsDraw: function (chart) {
      var spec = chart.$spec;
      if (!spec || !spec.steps || !spec.steps.length) return;
      var x = chart.scales.x, area = chart.chartArea, ctx = chart.ctx;
      ctx.save();
      ctx.strokeStyle = "#b45309";
      ctx.fillStyle = "#b45309";
      ctx.lineWidth = 1.5;
      ctx.setLineDash([5, 4]);
      ctx.font = "11px system-ui, sans-serif";
      spec.steps.forEach(function (s) {
        var px = x.getPixelForValue(s.x);
        if (px < area.left || px > area.right) return;
        ctx.beginPath();
        ctx.moveTo(px, area.top);
        ctx.lineTo(px, area.bottom);
        ctx.stroke();
        ctx.fillText("config", px + 3, area.top + 11);
      });
      ctx.restore();
    },
  };

  function percentileLabel(v) {
    if (v <= 0) return "0%";
    if (v >= 6) return "max";
    var p = 100 - 100 * Math.pow(10, -v);
    return String(+p.toFixed(Math.max(0, Math.ceil(v) - 2))) + "%";
  }

  function dataset(ds, spec) {
    var c = ds.color !== undefined ? color(ds.color) : color(0);
    var out = {
      label: ds.label,
      data: ds.data,
      yAxisID: ds.axis || "y",
      borderColor: c,
      backgroundColor: c,
      borderWidth: 2,
      borderDash: ds.dashed ? [6, 4] : [],
      pointRadius: 3,
      pointHoverRadius: 6,
      tension: 0.15,
      spanGaps: true,
    };
    if (spec.runs) {
      var many = spec.runs.length > 150;
      out.tension = 0;
      out.borderWidth = many ? 1.25 : 2;
      out.pointRadius = function (ctx) {
        var run = spec.runs[ctx.raw && ctx.raw.x];
        if (run && run.baseline) return 7;
        if (run && run.regressions.length) return 4.5;
        return many ? 1.2 : 3;
      };
      out.pointStyle = function (ctx) {
        var run = spec.runs[ctx.raw && ctx.raw.x];
        return run && run.baseline ? "rectRot" : "circle";
      };
      out.pointBackgroundColor = function (ctx) {
        var run = spec.runs[ctx.raw && ctx.raw.x];
        return run && run.regressions.length && !run.baseline ? BAD : c;
      };
    } else if (spec.x.ticks === "percentile") {
      out.pointRadius = 2;
      out.tension = 0;
    } else if (spec.id === "run-timeline") {
      out.pointRadius = 0;
      out.tension = 0;
      out.borderWidth = 1.5;
    }
    return out;
  }

  function xValues(spec) {
    var seen = {};
    spec.datasets.forEach(function (ds) { ds.data.forEach(function (p) { seen[p.x] = true; }); });
    return Object.keys(seen).map(Number).sort(function (a, b) { return a - b; });
  }

  function xScale(spec) {
    var x = spec.x;
    var scale = {
      type: x.log ? "logarithmic" : "linear",
      title: { display: true, text: x.title },
      grid: { color: "#f1f3f6" },
      ticks: { callback: function (v) { return fmt(v); } },
    };
    if (x.log) {
      var values = xValues(spec);
      scale.afterBuildTicks = function (axis) { axis.ticks = values.map(function (v) { return { value: v }; }); };
    }
    if (x.ticks === "percentile") {
      scale.min = 0;
      scale.max = x.max || 6;
      scale.ticks = { stepSize: 1, callback: percentileLabel };
    } else if (x.ticks === "runs") {
      var runs = spec.runs;
      // Half a run of padding on each side keeps edge points and labels clear of the axes.
      scale.min = -0.5;
      scale.max = Math.max(runs.length - 0.5, 1);
      scale.ticks = {
        maxTicksLimit: 8,
        // Date and time: runs of one day would otherwise all read the same date.
        callback: function (v) {
          if (!Number.isInteger(v) || !runs[v]) return "";
          return [runs[v].created.slice(0, 10), runs[v].created.slice(11, 16)];
        },
      };
    }
    return scale;
  }

  function tooltip(spec) {
    var callbacks = {
      label: function (ctx) { return ctx.dataset.label + ": " + fmt(ctx.parsed.y); },
    };
    if (spec.runs) {
      callbacks.title = function (items) {
        var run = spec.runs[items[0].parsed.x];
        return run ? "#" + run.id + (run.label ? " · " + run.label : "") + "  (" + run.created + ")" : "";
      };
      callbacks.afterBody = function (items) {
        var run = spec.runs[items[0].parsed.x];
        if (!run) return [];
        var lines = [];
        if (run.baseline) lines.push("Baseline");
        if (run.notes) lines.push("Notes: " + run.notes.slice(0, 120));
        run.regressions.forEach(function (r) { lines.push("Worse: " + r); });
        (run.changes || []).forEach(function (c) { lines.push("Config changed: " + c); });
        return lines;
      };
    } else if (spec.x.ticks === "percentile") {
      callbacks.title = function (items) { return "Percentile " + percentileLabel(items[0].parsed.x); };
    } else {
      callbacks.title = function (items) { return spec.x.title + ": " + fmt(items[0].parsed.x); };
    }
    return { callbacks: callbacks };
  }

  function draw(spec) {
    var canvas = document.getElementById(spec.id + "-canvas");
    if (!canvas) return;
    var scales = { x: xScale(spec) };
    spec.axes.forEach(function (a) {
      scales[a.id] = {
        type: "linear",
        position: a.position,
        display: "auto",
        beginAtZero: true,
        max: a.max === null ? undefined : a.max,
        title: { display: true, text: a.title },
        grid: { drawOnChartArea: a.id === "y", color: "#eef0f3" },
        ticks: { callback: function (v) { return fmt(v); } },
      };
    });
    var chart = new window.Chart(canvas, {
      type: "line",
      data: { datasets: spec.datasets.map(function (ds) { return dataset(ds, spec); }) },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        parsing: true,
        interaction: spec.runs || spec.x.ticks === "percentile"
          ? { mode: "nearest", intersect: false } : { mode: "index", intersect: false },
        plugins: {
          legend: {
            position: "bottom",
            title: { display: !!spec.legendTitle, text: spec.legendTitle || "" },
            labels: { boxWidth: 10, usePointStyle: true },
          },
          tooltip: tooltip(spec),
        },
        scales: scales,
      },
      plugins: [whiteBackground, segmentMarks],
    });
    chart.$spec = spec;
    chart.draw();
    charts[spec.id] = chart;
  }

  function downloadPng(id) {
    var chart = charts[id];
    if (!chart) return;
    var link = document.createElement("a");
    link.href = chart.toBase64Image("image/png", 1);
    link.download = "embperf-" + id + ".png";
    document.body.appendChild(link);
    link.click();
    link.remove();
  }

  function switchVariant(spec, key) {
    var chart = charts[spec.id];
    var variant = spec.variants && spec.variants[key];
    if (!chart || !variant) return;
    chart.data.datasets = variant.datasets.map(function (ds) { return dataset(ds, spec); });
    chart.update("none");
  }

  function mirror(text) {
    var out = document.getElementById("copied-text");
    if (!out) {
      out = document.createElement("output");
      out.id = "copied-text";
      out.hidden = true;
      document.body.appendChild(out);
    }
    out.textContent = text;
  }

  function copyText(text, button) {
    mirror(text);
    var done = function () {
      var old = button.dataset.label || button.textContent;
      button.dataset.label = old;
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = old; }, 1500);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { fallbackCopy(text); done(); });
    } else {
      fallbackCopy(text);
      done();
    }
  }

  function fallbackCopy(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    try { document.execCommand("copy"); } catch (e) { /* the text stays selectable in #copied-text */ }
    area.remove();
  }

  function init() {
    document.querySelectorAll(".swatch[data-series]").forEach(function (el) {
      el.style.background = color(Number(el.dataset.series));
    });
    var source = document.getElementById("result-charts");
    var payload = source ? JSON.parse(source.textContent) : [];
    // Either a list of specs, or {runs, charts} where charts share one list of runs.
    var specs = Array.isArray(payload) ? payload : payload.charts;
    specs.forEach(function (spec) { if (spec.runs === "shared") spec.runs = payload.runs; });
    var byId = {};
    specs.forEach(function (spec) { byId[spec.id] = spec; draw(spec); });
    document.querySelectorAll(".chart-png").forEach(function (b) {
      b.addEventListener("click", function () { downloadPng(b.dataset.chart); });
    });
    document.querySelectorAll(".chart-variant").forEach(function (s) {
      s.addEventListener("change", function () { switchVariant(byId[s.dataset.chart], s.value); });
    });
    var md = document.getElementById("copy-markdown");
    if (md) {
      md.addEventListener("click", function () {
        copyText(document.getElementById(md.dataset.source).textContent, md);
      });
    }
    var perm = document.getElementById("copy-permalink");
    if (perm) perm.addEventListener("click", function () { copyText(perm.dataset.link, perm); });
    window.EmbperfResultCharts = { charts: charts };
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
