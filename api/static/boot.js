/* Runs before first paint: where the API lives (behind a path prefix or not) and the saved theme. */
(function () {
  "use strict";
  var meta = document.querySelector('meta[name="rectrain-root"]');
  window.RECTRAIN_ROOT = meta ? meta.getAttribute("content") : "";
  var t = null;
  try { t = localStorage.getItem("rectrain.theme"); } catch (e) { /* storage disabled */ }
  if (t === "light" || t === "dark") document.documentElement.dataset.theme = t;
})();
