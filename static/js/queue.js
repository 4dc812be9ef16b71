// The review queue's "Select all on this page": ticks every selectable row, and says how many are ticked.
(function () {
  "use strict";
  var form = document.querySelector("[data-bulk-form]");
  if (!form) { return; }
  var all = form.querySelector("[data-select-all]");
  var note = form.querySelector("[data-selected-count]");
  var boxes = function () { return Array.prototype.slice.call(form.querySelectorAll('input[name="clusters"]')); };
  var sync = function () {
    var list = boxes();
    var ticked = list.filter(function (b) { return b.checked; }).length;
    if (all) {
      all.checked = list.length > 0 && ticked === list.length;
      all.indeterminate = ticked > 0 && ticked < list.length;
    }
    if (note && ticked > 0) { note.textContent = ticked + " selected; you confirm on the next page."; }
  };
  if (all) {
    all.addEventListener("change", function () {
      boxes().forEach(function (b) { b.checked = all.checked; });
      sync();
    });
  }
  form.addEventListener("change", function (event) {
    if (event.target && event.target.name === "clusters") { sync(); }
  });
}());
