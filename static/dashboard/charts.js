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
  if (s.figureDays) {
    make("chart-outcomes", {
      type: "bar",
      data: { labels: s.figureDays, datasets: [
        { label: "Failed runs", data: s.failedByDay, backgroundColor: palette[6] },
        { label: "Cancelled runs", data: s.cancelledByDay, backgroundColor: palette[7] },
        { label: "Saved by replay", data: s.savedByDay, backgroundColor: palette[3] },
      ] },
      options: { scales: { y: { beginAtZero: true, ticks: { callback: money } } } },
    });
    var names = s.topSteps.concat(s.topTools);
    make("chart-steps", {
      type: "bar",
      data: { labels: names, datasets: [{ label: "Cost (USD)", data: s.topStepCost.concat(s.topToolCost), backgroundColor: palette[4] }] },
      options: { indexAxis: "y", plugins: { legend: { display: false } }, scales: { x: { beginAtZero: true, ticks: { callback: money } } } },
    });
    Array.prototype.forEach.call(document.querySelectorAll("canvas.chart-burn"), function (el, i) {
      var b = s.burnDowns[Number(el.getAttribute("data-index"))];
      if (!b) return;
      el.id = el.id || "chart-burn-" + i;
      make(el.id, {
        type: "line",
        data: { labels: b.days, datasets: [
          { label: "Spent (USD)", data: b.spent, borderColor: palette[0], backgroundColor: palette[0], fill: false },
          { label: "Limit", data: b.days.map(function () { return b.limit; }), borderColor: palette[6], borderDash: [6, 4], pointRadius: 0, fill: false },
        ] },
        options: { scales: { y: { beginAtZero: true, ticks: { callback: money } } } },
      });
    });
  }
  window.tidebaseCharts = charts;
})();
