/* Shared Chart.js helpers for embperf pages (requires Chart.js loaded first as the global `Chart`).
 *
 * EmbperfCharts.line(canvas, {labels, series: [{label, data, axis: "y"|"y2", dashed}], xTitle, yTitle, y2Title})
 *   draws a line chart with one or two y axes and returns the Chart. Options: points (false hides the
 *   dots), animate (false for charts redrawn every second), tension (curve smoothing, default 0.2).
 * EmbperfCharts.update(chart, labels, [data per series])  replaces the data without re-animating.
 * EmbperfCharts.color(i)  the i-th series colour of the one palette every chart uses.
 * EmbperfCharts.fmt(x)  a compact number for axis ticks and tooltips ("16", "2.5", "12.3k").
 * Every page that draws charts loads this file first; result_charts.js and telemetry.js build on it.
 */
(function (global) {
  "use strict";

  // Ten colours: the compare page overlays up to ten runs.
  var PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#db2777",
                 "#65a30d", "#0f766e"];

  function color(i) {
    return PALETTE[i % PALETTE.length];
  }

  function fmt(x) {
    if (x === null || x === undefined || isNaN(x)) return "–";
    var a = Math.abs(x);
    if (a >= 1e6) return (x / 1e6).toFixed(a >= 1e7 ? 0 : 1) + "M";
    if (a >= 1e4) return (x / 1e3).toFixed(a >= 1e5 ? 0 : 1) + "k";
    if (a >= 100 || Number.isInteger(x)) return x.toFixed(0);
    if (a >= 10) return x.toFixed(1);
    if (a >= 1) return x.toFixed(2);
    if (a === 0) return "0";
    return x.toPrecision(2);
  }

  function axis(title, position, grid) {
    return {
      type: "linear",
      position: position,
      beginAtZero: true,
      title: { display: !!title, text: title || "" },
      grid: { display: grid, color: "#eef0f3" },
      ticks: { callback: function (v) { return fmt(v); } },
    };
  }

  function line(canvas, opts) {
    if (!global.Chart) throw new Error("Chart.js is not loaded");
    var hasY2 = (opts.series || []).some(function (s) { return s.axis === "y2"; });
    var datasets = (opts.series || []).map(function (s, i) {
      var c = s.color || color(i);
      return {
        label: s.label,
        data: s.data || [],
        yAxisID: s.axis || "y",
        borderColor: c,
        backgroundColor: c,
        borderWidth: 2,
        borderDash: s.dashed ? [6, 4] : [],
        pointRadius: opts.points === false ? 0 : 3,
        pointHoverRadius: 5,
        tension: opts.tension === undefined ? 0.2 : opts.tension,
        spanGaps: true,
      };
    });
    var scales = {
      x: {
        title: { display: !!opts.xTitle, text: opts.xTitle || "" },
        grid: { color: "#f3f4f6" },
        ticks: { maxTicksLimit: 12, autoSkip: true },
      },
      y: axis(opts.yTitle, "left", true),
    };
    if (hasY2) scales.y2 = axis(opts.y2Title, "right", false);
    return new global.Chart(canvas, {
      type: "line",
      data: { labels: opts.labels || [], datasets: datasets },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: opts.animate === false ? false : { duration: 300 },
        interaction: { mode: "index", intersect: false },
        plugins: {
          legend: { position: "bottom", labels: { boxWidth: 12, usePointStyle: true } },
          tooltip: {
            callbacks: {
              label: function (ctx) { return ctx.dataset.label + ": " + fmt(ctx.parsed.y); },
            },
          },
        },
        scales: scales,
      },
    });
  }

  function update(chart, labels, seriesData) {
    chart.data.labels = labels;
    seriesData.forEach(function (data, i) {
      if (chart.data.datasets[i]) chart.data.datasets[i].data = data;
    });
    chart.update("none");
  }

  global.EmbperfCharts = { line: line, update: update, color: color, fmt: fmt };
})(window);
