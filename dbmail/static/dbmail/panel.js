/* Comm panel behaviour, a few lines of vanilla JS. Every page works without it. */
(function () {
  "use strict";

  // Confirm dangerous buttons.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-confirm]");
    if (button && !window.confirm(button.getAttribute("data-confirm"))) event.preventDefault();
  });

  // Send and reschedule forms: the confirmation says what will happen and when.
  document.querySelectorAll("#send-form, #reschedule-form").forEach(function (f) {
    var button = f.querySelector("button[type=submit]");
    var say = function () {
      var n = Number(button.getAttribute("data-count") || 0);
      var whom = n.toLocaleString("en") + " address" + (n === 1 ? "" : "es");
      var later = f.querySelector("input[name=when][value=later]");
      var at = f.querySelector("input[name=send_at]").value;
      if (later && later.checked && at) {
        var d = new Date(at);
        var day = d.toLocaleDateString("en-GB", { day: "numeric", month: "short", year: "numeric" });
        var time = at.slice(11, 16);
        button.setAttribute("data-confirm", (f.id === "send-form" ? "Schedule this for " : "Move this to ") + day + " at " + time + "? It will be sent to " + whom + " then.");
      } else {
        button.setAttribute("data-confirm", "Send this to " + whom + " now?");
      }
    };
    f.addEventListener("change", say);
    f.addEventListener("input", say);
    say();
  });

  // Dashboard: draw the figures (embedded as JSON) with Chart.js; the tables below work without it.
  var dashData = document.getElementById("dashboard-data");
  if (dashData && window.Chart) {
    var data = JSON.parse(dashData.textContent);
    var css = getComputedStyle(document.documentElement);
    // "sent" is drawn in the sending blue: beside "delivered", two greens would not be told apart.
    var colour = function (name) { return css.getPropertyValue("--" + (name === "sent" ? "sending" : name)).trim() || "#57606a"; };
    var label = function (name) { name = name.replace(/_/g, " "); return name.charAt(0).toUpperCase() + name.slice(1); };
    var common = { responsive: true, maintainAspectRatio: false, animation: { duration: 300 },
                   plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } } };
    var daysCanvas = document.getElementById("chart-days");
    if (daysCanvas) {
      new window.Chart(daysCanvas, {
        type: "line",
        data: {
          labels: data.days,
          datasets: Object.keys(data.series).map(function (name) {
            return { label: label(name), data: data.series[name], borderColor: colour(name), backgroundColor: colour(name),
                     tension: 0.2, pointRadius: data.days.length > 60 ? 0 : 2, borderWidth: 2 };
          })
        },
        options: Object.assign({}, common, {
          interaction: { mode: "index", intersect: false },
          scales: { y: { beginAtZero: true, ticks: { precision: 0 } }, x: { ticks: { maxRotation: 0, autoSkipPadding: 12 } } }
        })
      });
      daysCanvas.setAttribute("data-rendered", "1");
    }
    var accountsCanvas = document.getElementById("chart-accounts");
    if (accountsCanvas) {
      var rows = data.accounts.length;
      accountsCanvas.parentNode.style.height = Math.min(40, 6 + 3.2 * rows) + "rem";
      new window.Chart(accountsCanvas, {
        type: "bar",
        data: {
          labels: data.accounts,
          datasets: Object.keys(data.per_account).map(function (name) {
            return { label: label(name), data: data.per_account[name], backgroundColor: colour(name) };
          })
        },
        options: Object.assign({}, common, { indexAxis: "y", scales: { x: { beginAtZero: true, ticks: { precision: 0 } } } })
      });
      accountsCanvas.setAttribute("data-rendered", "1");
    }
  }

  // Request page: follow the request while anything can change by itself (scheduled, sending).
  // Every part is redrawn from the poll: state badge, status line, bar, counts, delivery figures,
  // buttons and the emails table; the server renders the HTML parts from the page's own templates.
  var box = document.getElementById("progress");
  if (box && box.getAttribute("data-active") === "1") {
    var every = (parseInt(box.getAttribute("data-poll"), 10) || 3) * 1000;
    var shownLine = document.getElementById("status-line").textContent;
    // What the buttons as rendered offer: a send that ends before the first poll must still lose "Cancel the rest".
    var actionsKey = box.getAttribute("data-actions");
    var samples = [];  // [server time ms, handled] of recent polls, for the pace
    var fmt = function (n) { return Number(n).toLocaleString("en"); };
    var duration = function (seconds) {
      seconds = Math.max(0, Math.round(seconds));
      if (seconds < 50) return Math.max(seconds, 1) + " second" + (seconds === 1 ? "" : "s");
      var minutes = Math.round(seconds / 60);
      if (minutes < 60) return minutes === 1 ? "a minute" : minutes + " minutes";
      var hours = Math.floor(minutes / 60), rest = minutes % 60;
      return hours + " hour" + (hours === 1 ? "" : "s") + (rest ? " " + rest + " minute" + (rest === 1 ? "" : "s") : "");
    };
    // The pace seen over the last polls (up to a minute back); the server's average until then.
    var observedPace = function (p) {
      var handled = p.segments.reduce(function (sum, s) { return s.key === "sent" || s.key === "failed" ? sum + s.n : sum; }, 0);
      var now = Date.parse(p.now);
      samples.push([now, handled]);
      while (samples.length > 2 && now - samples[0][0] > 60000) samples.shift();
      var first = samples[0], seconds = (now - first[0]) / 1000;
      if (samples.length < 2 || seconds < 2 * every / 1000 || handled <= first[1]) return null;
      return 60 * (handled - first[1]) / seconds;
    };
    var setHTML = function (id, html) {
      var el = document.getElementById(id);
      if (el && html !== undefined) el.innerHTML = html;
    };
    var draw = function (p) {
      var badge = document.getElementById("request-status");
      badge.textContent = p.state_label;
      badge.className = "badge badge-" + p.state;
      document.getElementById("status-line").textContent = p.line;
      var pace = p.pace, perMinute = p.state === "sending" ? observedPace(p) : null;
      if (perMinute) {
        var waiting = p.segments.filter(function (s) { return s.key === "waiting"; })[0].n;
        pace = fmt(Math.round(perMinute)) + " a minute" + (waiting ? ", about " + duration(60 * waiting / perMinute) + " left" : "");
      }
      document.getElementById("pace").textContent = p.state === "sending" ? pace : "";
      var bar = box.querySelector("[role=progressbar]");
      bar.setAttribute("aria-valuenow", p.percent);
      bar.setAttribute("aria-valuetext", p.summary || "no emails yet");
      p.segments.forEach(function (s) {
        var seg = bar.querySelector("[data-segment=" + s.key + "]");
        seg.style.width = s.percent + "%";
        seg.title = s.label + ": " + s.n;
        var key = document.querySelector("#segments [data-segment=" + s.key + "]");
        key.hidden = !s.n;
        key.querySelector("b").textContent = s.n;
      });
      var chart = document.getElementById("status-chart");
      chart.replaceChildren();
      Object.keys(p.counts).forEach(function (status) {
        var row = document.createElement("div"), label = document.createElement("span");
        var barEl = document.createElement("span"), n = document.createElement("b");
        row.className = "chart-row";
        label.className = "chart-label"; label.textContent = status;
        barEl.className = "chart-bar st-" + status; barEl.style.width = (p.total ? 100 * p.counts[status] / p.total : 0) + "%";
        n.className = "chart-n"; n.setAttribute("data-status", status); n.textContent = p.counts[status];
        row.append(label, barEl, n);
        chart.appendChild(row);
      });
      setHTML("delivery", p.html.delivery);
      setHTML("emails-table", p.html.emails);
      // The buttons change only with what they offer (their CSRF tokens differ on every render).
      var key = [p.state, !!p.cancellable, !!p.retryable].join();
      if (key !== actionsKey) setHTML("actions", p.html.actions);
      actionsKey = key;
      if (!p.editable) {
        var schedule = document.getElementById("schedule");
        if (schedule) schedule.remove();
      }
      if (p.line !== shownLine) {
        // The flashes said what the last action did; once things move, the status line says where they are.
        document.querySelectorAll(".messages .message.success, .messages .message.info").forEach(function (m) { m.remove(); });
        document.querySelectorAll(".messages:empty").forEach(function (m) { m.remove(); });
        shownLine = p.line;
      }
      box.setAttribute("data-state", p.state);
    };
    var poll = function () {
      fetch(box.getAttribute("data-status-url") + window.location.search, { credentials: "same-origin" })
        .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
        .then(function (p) {
          draw(p);
          if (p.active) setTimeout(poll, every);
          else box.setAttribute("data-active", "0");
        })
        .catch(function () { setTimeout(poll, every * 3); });
    };
    setTimeout(poll, every);
  }
})();
