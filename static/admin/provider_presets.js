// The provider add form: picking a preset fills in the type, base URL and (if empty) the name.
// Without JavaScript the server does the same on save (providers/admin.py ProviderForm).
(function () {
  function ready(fn) { document.readyState !== "loading" ? fn() : document.addEventListener("DOMContentLoaded", fn); }
  ready(function () {
    var data = document.getElementById("provider-presets-data");
    var field = document.getElementById("id_preset");
    if (!data || !field) return;
    var presets = {};
    JSON.parse(data.textContent).forEach(function (p) { presets[p.slug] = p; });
    function apply() {
      var preset = presets[field.value.trim()];
      if (!preset) return;
      var type = document.getElementById("id_type"), url = document.getElementById("id_base_url"),
          name = document.getElementById("id_name");
      if (type) { type.value = preset.type; type.dispatchEvent(new Event("change")); }
      if (url) url.value = preset.base_url;
      if (name && !name.value) name.value = preset.slug;
    }
    field.addEventListener("change", apply);
    field.addEventListener("input", apply);
  });
})();
