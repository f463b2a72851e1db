// Starts Swagger UI on /docs (api/_pages.py). A file of its own, not an inline script, so that
// the page's Content-Security-Policy can refuse every inline script.
"use strict";

const root = document.getElementById("swagger-ui");
window.ui = SwaggerUIBundle({
  url: root.dataset.openapiUrl,
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  presets: [SwaggerUIBundle.presets.apis],
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  // The default validator is a public web service: never call it.
  validatorUrl: null,
});
