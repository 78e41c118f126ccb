// Route targets: the upstream model field's suggestions narrow to the provider chosen in the
// same row (field ids differ only in "provider" / "upstream_model"). Without JavaScript the
// list shows every provider's models, each labelled with its provider.
(function () {
  var all = {};  // datalist id -> its original options

  function narrow(input) {
    // A row added in the page was copied from a template whose "list" still says __prefix__.
    var list = document.getElementById(input.id + "-models");
    if (list) input.setAttribute("list", list.id);
    var select = document.getElementById(input.id.replace(/upstream_model$/, "provider"));
    if (!list || !select) return;
    if (!all[list.id]) all[list.id] = Array.prototype.slice.call(list.options).map(function (o) { return o.cloneNode(true); });
    list.replaceChildren.apply(list, all[list.id].filter(function (o) {
      return !select.value || o.dataset.provider === select.value;
    }).map(function (o) { return o.cloneNode(true); }));
  }

  document.addEventListener("focusin", function (event) {
    var input = event.target;
    if (input.matches && input.matches("input[list$='-models']")) narrow(input);
  });
})();
