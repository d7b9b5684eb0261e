// triggerFS web view: the little script the pages use. Plain JS, no library; every page
// works without it except the live run (which then shows its state when loaded).
"use strict";

// Fleet: filter the table's rows as one types (the form filters on the server too).
document.querySelectorAll("input[data-filter]").forEach(function (input) {
  var rows = document.querySelectorAll(input.dataset.filter);
  input.addEventListener("input", function () {
    var text = input.value.trim().toLowerCase();
    rows.forEach(function (row) {
      row.hidden = text !== "" && row.textContent.toLowerCase().indexOf(text) < 0;
    });
  });
});

// A run: follow its events (SSE) into the grid, the counts and the output pane.
(function () {
  var run = document.getElementById("run");
  if (!run) return;
  var id = run.dataset.run;
  var grid = document.getElementById("grid");
  var stream = document.getElementById("stream");
  var cells = {};
  grid.querySelectorAll(".cell").forEach(function (c) { cells[c.dataset.worker] = c; });
  var expected = parseInt(run.dataset.expected, 10) || 0;
  // The pane keeps the last MAX_LINES lines (each worker's page has its own output).
  var MAX_LINES = 5000;
  var chunks = [];
  var nLines = 0;
  if (stream.firstChild) {
    nLines = stream.textContent.split("\n").length - 1;
    chunks.push(nLines);
  }

  function cell(worker) {
    var c = cells[worker];
    if (!c) {
      c = document.createElement("a");
      c.className = "cell running";
      c.dataset.worker = worker;
      c.dataset.outcome = "running";
      c.href = "/runs/" + id + "/workers/" + encodeURIComponent(worker);
      c.title = worker + " · running";
      c.textContent = worker;
      grid.appendChild(c);
      cells[worker] = c;
    }
    return c;
  }

  function end(c, e) {
    c.className = "cell " + e.class;
    c.dataset.outcome = e.outcome;
    c.title = e.worker + " · " + e.outcome +
      (e.exit_code !== undefined ? ", exit " + e.exit_code : "");
  }

  function counts() {
    var ok = 0, bad = 0, running = 0, n = 0;
    for (var w in cells) {
      n++;
      var o = cells[w].dataset.outcome;
      if (o === "ok") ok++; else if (o === "running") running++; else bad++;
    }
    var total = Math.max(expected, n, 1);
    document.getElementById("n-ok").textContent = ok;
    document.getElementById("n-bad").textContent = bad;
    document.getElementById("n-running").textContent = running;
    document.getElementById("n-total").textContent = Math.max(expected, n);
    document.getElementById("bar-ok").style.width = (ok * 100 / total) + "%";
    document.getElementById("bar-bad").style.width = (bad * 100 / total) + "%";
    document.getElementById("bar-running").style.width = (running * 100 / total) + "%";
  }

  function apply(events) {
    var lines = [];
    events.forEach(function (e) {
      switch (e.event) {
        case "routed": case "queued": expected = e.workers; break;
        case "accepted": cell(e.worker); break;
        case "output": cell(e.worker); lines.push(e.worker + ": " + e.line.replace(/\s+$/, "")); break;
        case "done": case "failed": end(cell(e.worker), e); break;
        case "summary":
          document.getElementById("ended").textContent = "ended: " + e.ok + " of " +
            e.workers + " ok, " + e.failed + " failed, " + e.timed_out + " timed out, " +
            e.lost + " lost, " + e.offline + " offline, " + e.skipped + " skipped, " +
            e.no_response + " without response";
          break;
        case "error":
          document.getElementById("ended").textContent =
            "ended with an error: " + e.kind + ": " + e.message;
          break;
      }
    });
    if (lines.length) {
      var atBottom = stream.scrollTop + stream.clientHeight >= stream.scrollHeight - 4;
      stream.appendChild(document.createTextNode(lines.join("\n") + "\n"));
      chunks.push(lines.length);
      nLines += lines.length;
      while (nLines > MAX_LINES && chunks.length > 1) {
        stream.removeChild(stream.firstChild);
        nLines -= chunks.shift();
      }
      if (atBottom) stream.scrollTop = stream.scrollHeight;
    }
    counts();
  }

  var source = new EventSource("/runs/" + id + "/events?from=" + run.dataset.from);
  source.addEventListener("batch", function (m) { apply(JSON.parse(m.data)); });
  source.addEventListener("end", function () {
    source.close();
    run.dataset.state = "ended";
  });
  counts();
})();
