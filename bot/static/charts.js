/* Small inline-SVG charts for the operator console (no library, no CDN).
   LoopCharts.line(container, {title, series: [{name, points: [{x, y, lo, hi}]}], time, yMin, yMax, xLabel})
   draws lines with optional 95% bands at the container's width; labels are set with textContent only. */
"use strict";
var LoopCharts = (function () {
  var NS = "http://www.w3.org/2000/svg";
  var COLORS = ["#2f6f9f", "#d9822b", "#3a9d5d", "#b03a48", "#7a5ea8", "#8c6d31", "#2a9d9a", "#666"];
  var H = 240, M = {top: 30, right: 16, bottom: 34, left: 52};
  var CHAR_W = 7, ROW_H = 14;  // about how wide a legend or title character is and how tall a line, in px

  function svg(tag, attrs, text) {
    var node = document.createElementNS(NS, tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  /** About ``count`` round tick values covering [lo, hi]. */
  function ticks(lo, hi, count) {
    if (hi === lo) { hi = lo + 1; lo = lo - 1; }
    var raw = (hi - lo) / count, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var step = [1, 2, 5, 10].map(function (m) { return m * mag; }).filter(function (s) { return s >= raw; })[0];
    var out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    return out;
  }

  function pad(n) { return String(n).padStart(2, "0"); }

  function timeLabel(seconds, span) {
    var d = new Date(seconds * 1000), day = pad(d.getMonth() + 1) + "-" + pad(d.getDate());
    return span > 2 * 86400 ? day : day + " " + pad(d.getHours()) + ":00";
  }

  /** For time axes: at most ``count`` of the data's own x values, evenly picked. */
  function dataTicks(xs, count) {
    var unique = xs.filter(function (x, i) { return xs.indexOf(x) === i; }).sort(function (a, b) { return a - b; });
    var every = Math.ceil(unique.length / count);
    return unique.filter(function (x, i) { return i % every === 0; });
  }

  function number(v) { return Math.abs(v) >= 1000 || (v !== 0 && Math.abs(v) < 0.01) ? v.toExponential(1) : String(+v.toFixed(3)); }

  /** The series' legend, right-aligned: beside the title where both fit on its line, else in rows under it
      (a narrow chart, a phone's). Returns the y the plot starts at. */
  function legend(root, series, W, titleWidth) {
    var widths = series.map(function (s) { return 12 + CHAR_W * (s.name.length + 2); });
    var total = widths.reduce(function (sum, w) { return sum + w; }, 0);
    var y = M.left + titleWidth + total <= W - M.right ? 16 : 16 + ROW_H, x = W - M.right;
    series.slice().reverse().forEach(function (s, ri) {
      var i = series.length - 1 - ri;
      if (x - widths[i] < 0 && x < W - M.right) { y += ROW_H; x = W - M.right; }
      root.append(svg("text", {x: x, y: y, "text-anchor": "end", class: "lc-legend", fill: COLORS[i % COLORS.length]},
        "■ " + s.name));
      x -= widths[i];
    });
    return Math.max(M.top, y + ROW_H);
  }

  function line(container, opts) {
    var series = (opts.series || []).filter(function (s) { return s.points.length; });
    container.replaceChildren();
    var W = Math.max(container.clientWidth || 640, 280);
    var root = svg("svg", {viewBox: "0 0 " + W + " " + H, width: W, height: H, class: "lc-chart", role: "img"});
    root.append(svg("title", {}, opts.title || "chart"));
    container.append(root);
    var titleWidth = opts.title ? CHAR_W * opts.title.length : 0;
    if (opts.title) {
      root.append(svg("text", {x: Math.max(0, Math.min(M.left, W - M.right - titleWidth)), y: 16, class: "lc-title"},
        opts.title));
    }
    if (!series.length) {
      root.append(svg("text", {x: W / 2, y: H / 2, "text-anchor": "middle", class: "lc-empty"}, "No data yet"));
      return;
    }
    var xs = [], ys = [];
    series.forEach(function (s) {
      s.points.forEach(function (p) {
        xs.push(p.x); ys.push(p.y);
        if (p.lo !== null && p.lo !== undefined) ys.push(p.lo, p.hi);
      });
    });
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    if (x0 === x1) { x0 -= opts.time ? 3600 : 1; x1 += opts.time ? 3600 : 1; }
    var y0 = opts.yMin !== undefined ? opts.yMin : Math.min.apply(null, ys);
    var y1 = opts.yMax !== undefined ? opts.yMax : Math.max.apply(null, ys);
    var yTicks = ticks(y0, y1, 5);
    y0 = Math.min(y0, yTicks[0]); y1 = Math.max(y1, yTicks[yTicks.length - 1]);
    var sx = function (x) { return M.left + (x - x0) / (x1 - x0) * (W - M.left - M.right); };
    var top = legend(root, series, W, titleWidth);
    var sy = function (y) { return H - M.bottom - (y - y0) / ((y1 - y0) || 1) * (H - top - M.bottom); };

    yTicks.forEach(function (t) {
      root.append(svg("line", {x1: M.left, x2: W - M.right, y1: sy(t), y2: sy(t), class: "lc-grid"}));
      root.append(svg("text", {x: M.left - 6, y: sy(t) + 4, "text-anchor": "end", class: "lc-tick"}, number(t)));
    });
    var span = x1 - x0;
    (opts.time ? dataTicks(xs, Math.floor(W / 90)) : ticks(x0, x1, Math.floor(W / 90))).forEach(function (t) {
      if (t < x0 || t > x1) return;
      var label = opts.time ? timeLabel(t, span) : number(t);
      root.append(svg("text", {x: sx(t), y: H - M.bottom + 16, "text-anchor": "middle", class: "lc-tick"}, label));
    });
    root.append(svg("line", {x1: M.left, x2: M.left, y1: top, y2: H - M.bottom, class: "lc-axis"}));
    root.append(svg("line", {x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom, class: "lc-axis"}));
    if (opts.xLabel) root.append(svg("text", {x: W - M.right, y: H - 4, "text-anchor": "end", class: "lc-tick"}, opts.xLabel));

    series.forEach(function (s, i) {
      var color = COLORS[i % COLORS.length];
      var band = s.points.filter(function (p) { return p.lo !== null && p.lo !== undefined; });
      if (band.length) {
        var upper = band.map(function (p) { return sx(p.x) + "," + sy(p.hi); });
        var lower = band.slice().reverse().map(function (p) { return sx(p.x) + "," + sy(p.lo); });
        root.append(svg("polygon", {points: upper.concat(lower).join(" "), fill: color, class: "lc-band"}));
        band.forEach(function (p) {
          root.append(svg("line", {x1: sx(p.x), x2: sx(p.x), y1: sy(p.lo), y2: sy(p.hi), stroke: color, class: "lc-whisker"}));
        });
      }
      var d = s.points.map(function (p, j) { return (j ? "L" : "M") + sx(p.x).toFixed(1) + " " + sy(p.y).toFixed(1); });
      root.append(svg("path", {d: d.join(" "), stroke: color, class: "lc-line"}));
      s.points.forEach(function (p) {
        var dot = svg("circle", {cx: sx(p.x), cy: sy(p.y), r: 3, fill: color});
        var tip = s.name + ": " + number(p.y) + (p.n !== undefined ? " (n=" + p.n + ")" : "") +
          (p.lo !== null && p.lo !== undefined ? " 95% CI " + number(p.lo) + "–" + number(p.hi) : "");
        dot.append(svg("title", {}, tip));
        root.append(dot);
      });
    });
  }

  return {line: line};
})();
