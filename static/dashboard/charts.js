/* Draws the usage charts from the series the page embeds with json_script (no CDN: Chart.js is
   vendored in static/vendor/chartjs). Exposes window.tidebaseCharts for tests. */
(function () {
  "use strict";
  var holder = document.getElementById("usage-series");
  if (!holder || typeof Chart === "undefined") return;
  var s = JSON.parse(holder.textContent);
  var css = getComputedStyle(document.documentElement);
  var text = css.getPropertyValue("--muted").trim() || "#666";
  var grid = css.getPropertyValue("--border").trim() || "#ddd";
  var palette = ["#1d5fd6", "#17a2b8", "#e8590c", "#2f9e44", "#ae3ec9", "#f08c00", "#c92a2a", "#495057"];
  Chart.defaults.color = text;
  Chart.defaults.borderColor = grid;
  Chart.defaults.font.family = "system-ui, sans-serif";
  var money = function (v) { return "$" + Number(v).toLocaleString(undefined, { maximumFractionDigits: 4 }); };
  var charts = {};

  function make(id, config) {
    var el = document.getElementById(id);
    if (!el) return;
    config.options = Object.assign({ responsive: true, maintainAspectRatio: false, animation: false }, config.options || {});
    charts[id] = new Chart(el, config);
  }

  make("chart-cost", {
    type: "bar",
    data: { labels: s.days, datasets: [{ label: "Cost (USD)", data: s.cost, backgroundColor: palette[0] }] },
    options: { plugins: { legend: { display: false }, tooltip: { callbacks: { label: function (c) { return money(c.parsed.y); } } } },
               scales: { y: { beginAtZero: true, ticks: { callback: money } } } },
  });
  make("chart-tokens", {
    type: "bar",
    data: { labels: s.days, datasets: s.tokensByModel.map(function (d, i) {
      return { label: d.label, data: d.data, backgroundColor: palette[i % palette.length] };
    }) },
    options: { scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } } },
  });
  make("chart-workflows", {
    type: "bar",
    data: { labels: s.workflows, datasets: [{ label: "Cost (USD)", data: s.workflowCost, backgroundColor: palette[1] }] },
    options: { indexAxis: "y", plugins: { legend: { display: false } }, scales: { x: { beginAtZero: true, ticks: { callback: money } } } },
  });
  make("chart-runs", {
    type: "bar",
    data: { labels: s.topRuns, datasets: [{ label: "Cost (USD)", data: s.topRunCost, backgroundColor: palette[2] }] },
    options: { indexAxis: "y", plugins: { legend: { display: false } }, scales: { x: { beginAtZero: true, ticks: { callback: money } } } },
  });
  window.tidebaseCharts = charts;
})();
