(function () {
  "use strict";
  // Hover panel for plotted candidates and sortable tables. Model- and user-written text only ever reaches the
  // page through textContent (never innerHTML): it is data, shown as text.
  var source = document.getElementById("uhnas-data");
  var data = source ? JSON.parse(source.textContent) : {};
  var byNumber = {};
  (data.candidates || []).forEach(function (c) { byNumber[String(c.number)] = c; });
  var tip = document.getElementById("tip");

  function num(v, digits) { return v === null || v === undefined ? "-" : Number(v).toFixed(digits); }
  function sig(v) { return v === null || v === undefined ? "-" : String(Number(Number(v).toPrecision(4))); }
  function energy(v) {
    if (v === null || v === undefined) { return "-"; }
    var units = [[1e9, "J"], [1e6, "mJ"], [1e3, "\u00b5J"], [1, "nJ"]];
    for (var i = 0; i < units.length; i++) {
      if (Math.abs(v) >= units[i][0]) { return sig(v / units[i][0]) + " " + units[i][1]; }
    }
    return sig(v * 1e3) + " pJ";
  }
  function add(parent, tag, cls, text) {
    var el = document.createElement(tag);
    if (cls) { el.className = cls; }
    if (text !== undefined) { el.textContent = text; }
    parent.appendChild(el);
    return el;
  }
  function row(table, key, value) {
    var tr = add(table, "tr");
    add(tr, "td", "", key);
    add(tr, "td", "n", value);
  }
  function fill(c) {
    while (tip.firstChild) { tip.removeChild(tip.firstChild); }
    add(tip, "div", "t", "#" + c.number + "  generation " + c.generation + "  " + (c.operator || "-") +
      (c.front ? "  (Pareto front)" : "") + (c.feasible ? "" : "  (infeasible)"));
    if (c.name) { add(tip, "div", "", "name: " + c.name); }
    add(tip, "div", "layers", c.layers || "-");
    var t = add(tip, "table");
    row(t, "accuracy clean", num(c.accuracy_clean, 4));
    row(t, "noisy mean / p5", num(c.accuracy_noisy_mean, 4) + " / " + num(c.accuracy_noisy_p5, 4));
    row(t, "energy per inference", energy(c.energy_nj));
    row(t, "parameters", c.params === null || c.params === undefined ? "-" : Number(c.params).toLocaleString("en"));
    var parts = c.energy_breakdown_nj || {};
    Object.keys(parts).forEach(function (k) {
      var share = c.energy_nj ? " (" + (100 * (parts[k] || 0) / c.energy_nj).toFixed(0) + " %)" : "";
      row(t, "  " + k, energy(parts[k]) + share);
    });
    (c.violations || []).forEach(function (v) {
      row(t, "violates " + v.constraint, sig(v.actual) + " > " + sig(v.limit) + " " + v.unit);
    });
  }
  function place(event) {
    var x = event.clientX + 16, y = event.clientY + 12;
    var w = tip.offsetWidth, h = tip.offsetHeight;
    if (x + w > window.innerWidth - 8) { x = Math.max(8, event.clientX - w - 16); }
    if (y + h > window.innerHeight - 8) { y = Math.max(8, window.innerHeight - h - 8); }
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  }
  document.querySelectorAll("svg a.pt").forEach(function (a) {
    var title = a.querySelector("title");
    if (title) { a.removeChild(title); }  // the script's panel replaces the browser's tooltip
    var c = byNumber[a.getAttribute("data-trial")];
    if (!c || !tip) { return; }
    a.addEventListener("mouseenter", function (e) { fill(c); tip.style.display = "block"; place(e); });
    a.addEventListener("mousemove", place);
    a.addEventListener("mouseleave", function () { tip.style.display = "none"; });
  });

  function key(cell) {
    var text = cell.getAttribute("data-v");
    if (text === null) { text = cell.textContent.trim(); }
    var n = Number(text.replace(/,/g, ""));
    return text !== "" && text !== "-" && !isNaN(n) ? n : text.toLowerCase();
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var body = table.tBodies[0];
    table.querySelectorAll("th").forEach(function (th, index) {
      var ascending = true;
      th.addEventListener("click", function () {
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a.cells[index]), y = key(b.cells[index]);
          if (typeof x !== typeof y) { x = String(x); y = String(y); }
          return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);
        });
        ascending = !ascending;
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
})();
