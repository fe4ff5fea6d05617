// The history page's picker: one select for target and plan fills the form's two hidden fields.
(function () {
  "use strict";
  var select = document.getElementById("pair-select");
  if (!select) { return; }
  select.addEventListener("change", function () {
    var v = select.value.split(":");
    select.form.target.value = v[0];
    select.form.plan.value = v[1];
  });
})();
