// The results browser's own script (experiments/report/site.py writes the pages): every table.sortable sorts
// by a click on its header (tablesort, vendored beside this file), and every input[data-filter] shows only the
// rows of its table that contain all the words typed (case-insensitive). `?q=words` in the page's address fills
// the filter marked data-query, so a filtered view can be linked. Nothing is loaded from the network.
(function () {
  "use strict";

  function words(text) {
    return text.toLowerCase().split(/\s+/).filter(function (w) { return w.length > 0; });
  }

  function applyFilter(input, table, counter) {
    var wanted = words(input.value);
    var rows = table.tBodies[0].rows;
    var shown = 0;
    for (var i = 0; i < rows.length; i++) {
      var text = rows[i].textContent.toLowerCase();
      var keep = wanted.every(function (w) { return text.indexOf(w) !== -1; });
      rows[i].hidden = !keep;
      if (keep) shown++;
    }
    if (counter) counter.textContent = shown + " of " + rows.length + " rows";
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("table.sortable").forEach(function (table) {
      new Tablesort(table);
    });
    var query = new URLSearchParams(window.location.search).get("q");
    document.querySelectorAll("input[data-filter]").forEach(function (input) {
      var id = input.getAttribute("data-filter");
      var table = document.getElementById(id);
      var counter = document.getElementById(id + "-count");
      if (query !== null && input.hasAttribute("data-query")) input.value = query;
      input.addEventListener("input", function () { applyFilter(input, table, counter); });
      applyFilter(input, table, counter);
    });
    document.body.setAttribute("data-ready", "1");
  });
})();
