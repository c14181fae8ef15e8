// The console works without JavaScript; this only keeps a form from being sent twice
// by a double click (the request id would make the second one harmless anyway).
document.addEventListener("submit", function (event) {
  var form = event.target;
  if (form.method && form.method.toLowerCase() === "post") {
    if (form.dataset.sent) { event.preventDefault(); return; }
    form.dataset.sent = "1";
  }
});
