/* Tidebase dashboard: toasts for htmx events and errors. Everything else is htmx attributes. */
(function () {
  "use strict";

  function toast(text, kind) {
    var box = document.getElementById("toasts");
    if (!box) return;
    var el = document.createElement("div");
    el.className = "toast" + (kind === "error" ? " error" : "");
    el.setAttribute("role", kind === "error" ? "alert" : "status");
    el.textContent = text;
    box.appendChild(el);
    setTimeout(function () { el.remove(); }, 6000);
  }
  window.tidebaseToast = toast;

  document.body.addEventListener("gate-decided", function (evt) {
    var d = evt.detail || {};
    if (d.message) toast(d.message);  // a vote counted towards a quorum: the gate is still pending
    else if (d.status) toast("Gate " + d.status + (d.actor ? " by " + d.actor : "") + ".");
  });

  // <form data-confirm="Sure?">: ask before a plain (non-htmx) form submits. Inline onsubmit
  // handlers are refused by the Content-Security-Policy; htmx forms use hx-confirm.
  document.addEventListener("submit", function (evt) {
    var form = evt.target;
    var text = form && form.getAttribute && form.getAttribute("data-confirm");
    if (text && !window.confirm(text)) evt.preventDefault();
  }, true);

  document.body.addEventListener("htmx:responseError", function (evt) {
    var xhr = evt.detail.xhr;
    var msg = xhr.status === 403 ? "You do not have permission to do that."
      : xhr.status === 404 ? "Not found: it may have been deleted."
      : "The server answered " + xhr.status + ". Try again, or reload the page.";
    toast(msg, "error");
  });

  document.body.addEventListener("htmx:sendError", function () {
    toast("Cannot reach the server. Retrying on the next refresh…", "error");
  });
})();
