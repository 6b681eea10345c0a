// Package search over /packages.json: [[name, downloads_30d, downloads_all], ...].
// Results are built with DOM calls (textContent), never innerHTML, so names cannot inject markup.
(function () {
  "use strict";
  var index = null;
  var form = document.getElementById("search");
  var input = document.getElementById("q");
  var results = document.getElementById("results");
  function show(query) {
    while (results.firstChild) { results.removeChild(results.firstChild); }
    var q = query.trim().toLowerCase().replace(/[-_.]+/g, "-");
    if (q.length < 2 || index === null) { return; }
    var hits = index.filter(function (row) { return row[0].indexOf(q) !== -1; });
    hits.sort(function (a, b) { return (b[1] - a[1]) || (a[0] < b[0] ? -1 : 1); });
    hits.slice(0, 100).forEach(function (row) {
      var li = document.createElement("li");
      var a = document.createElement("a");
      a.href = "/project/" + encodeURIComponent(row[0]) + "/";
      a.textContent = row[0];
      li.appendChild(a);
      li.appendChild(document.createTextNode(" (" + row[1] + " downloads in 30 days)"));
      results.appendChild(li);
    });
  }
  fetch("/packages.json").then(function (r) { return r.json(); }).then(function (data) {
    index = data;
    var start = new URLSearchParams(window.location.search).get("q");
    if (start) { input.value = start; show(start); }
  });
  input.addEventListener("input", function () { show(input.value); });
  form.addEventListener("submit", function (e) { e.preventDefault(); show(input.value); });
})();
