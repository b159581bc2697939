/* Comm panel behaviour, a few lines of vanilla JS. Every page works without it. */
(function () {
  "use strict";

  // Confirm dangerous buttons.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-confirm]");
    if (button && !window.confirm(button.getAttribute("data-confirm"))) event.preventDefault();
  });

  // Compose: show only the chosen recipient source, insert variables, live count.
  var form = document.getElementById("compose");
  if (form) {
    var lastField = form.querySelector("#id_text_body");
    form.querySelectorAll("textarea, input[type=text]").forEach(function (el) {
      el.addEventListener("focus", function () { lastField = el; });
    });
    var varList = document.getElementById("variables");
    varList.addEventListener("click", function (event) {
      var button = event.target.closest("[data-insert]");
      if (!button || !lastField) return;
      var text = button.getAttribute("data-insert");
      var start = lastField.selectionStart || 0, end = lastField.selectionEnd || 0;
      lastField.value = lastField.value.slice(0, start) + text + lastField.value.slice(end);
      lastField.focus();
      lastField.selectionStart = lastField.selectionEnd = start + text.length;
      scheduleCount();
    });
    // CSV columns are variables too: offer them once a file has been read.
    function addVariables(names) {
      (names || []).forEach(function (name) {
        var text = "{{ " + name + " }}";
        if (varList.querySelector('[data-insert="' + text + '"]')) return;
        var li = document.createElement("li"), button = document.createElement("button");
        button.type = "button"; button.className = "var"; button.setAttribute("data-insert", text); button.textContent = name;
        li.appendChild(button);
        varList.appendChild(li);
      });
    }

    function chosen(name) {
      var el = form.querySelector("[name=" + name + "]:checked") || form.querySelector("[name=" + name + "]");
      return el ? el.value : "";
    }
    function showSource() {
      var source = chosen("source"), set = chosen("recipient_set");
      form.querySelectorAll("[data-source]").forEach(function (el) { el.hidden = el.getAttribute("data-source") !== source; });
      form.querySelectorAll("[data-set]").forEach(function (el) {
        el.hidden = (el.getAttribute("data-set") === "groups") !== (set === "groups");
      });
    }

    var countEl = document.getElementById("audience-count");
    var notesEl = document.getElementById("audience-notes");
    var timer = null, serial = 0;
    function scheduleCount() { clearTimeout(timer); timer = setTimeout(count, 400); }
    function note(text, cls) {
      var li = document.createElement("li");
      li.className = cls || "warn";
      li.textContent = text;
      return li;
    }
    function count() {
      var mine = ++serial;
      countEl.textContent = "…";
      fetch(form.getAttribute("data-count-url"), { method: "POST", body: new FormData(form), credentials: "same-origin" })
        .then(function (r) { return r.json(); })
        .then(function (data) {
          if (mine !== serial) return;  // a newer choice is being counted
          var list = document.createElement("ul");
          list.className = "warnings";
          if (!data.ok) {
            countEl.textContent = "–";
            list.appendChild(note(data.error));
          } else {
            countEl.textContent = data.count;
            addVariables(data.columns);
            if (data.large) list.appendChild(note("Large send: more than " + data.large_threshold + " addresses."));
            if (data.invalid_count) list.appendChild(note(data.invalid_count + " cannot be mailed: " + data.invalid.join(", ")));
            Object.keys(data.empty).forEach(function (name) {
              var e = data.empty[name];
              list.appendChild(note(e.count + " would get an empty {{ " + name + " }}, e.g. " + e.examples.join(", ")));
            });
            if (!data.count) list.appendChild(note("Nobody would get this mail."));
          }
          notesEl.replaceChildren(list);
        })
        .catch(function () { if (mine === serial) countEl.textContent = "?"; });
    }
    form.addEventListener("change", function (event) {
      if (event.target.name === "source" || event.target.name === "recipient_set") showSource();
      if (!/^(new_attachments|remove_attachments)$/.test(event.target.name)) scheduleCount();
    });
    form.addEventListener("input", function (event) {
      if (/^(addresses|params|subject|text_body|html_body)$/.test(event.target.name)) scheduleCount();
    });
    showSource();
    count();
  }

  // Dashboard: draw the figures (embedded as JSON) with Chart.js; the tables below work without it.
  var dashData = document.getElementById("dashboard-data");
  if (dashData && window.Chart) {
    var data = JSON.parse(dashData.textContent);
    var css = getComputedStyle(document.documentElement);
    // "sent" is drawn in the sending blue: beside "delivered", two greens would not be told apart.
    var colour = function (name) { return css.getPropertyValue("--" + (name === "sent" ? "sending" : name)).trim() || "#57606a"; };
    var label = function (name) { return name.charAt(0).toUpperCase() + name.slice(1); };
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

  // Request page: refresh the progress bar and chart while the request is sending.
  var box = document.getElementById("progress");
  if (box && box.getAttribute("data-active") === "1") {
    var every = (parseInt(box.getAttribute("data-poll"), 10) || 3) * 1000;
    var poll = function () {
      fetch(box.getAttribute("data-status-url"), { credentials: "same-origin" })
        .then(function (r) { return r.json(); })
        .then(function (p) {
          document.getElementById("progress-bar").style.width = p.percent + "%";
          box.querySelector("[role=progressbar]").setAttribute("aria-valuenow", p.percent);
          document.getElementById("progress-text").textContent = p.done + " of " + p.total + " finished (" + p.percent + "%)";
          var chart = document.getElementById("status-chart");
          chart.replaceChildren();
          Object.keys(p.counts).forEach(function (status) {
            var row = document.createElement("div"), label = document.createElement("span");
            var bar = document.createElement("span"), n = document.createElement("b");
            row.className = "chart-row";
            label.className = "chart-label"; label.textContent = status;
            bar.className = "chart-bar st-" + status; bar.style.width = (p.total ? 100 * p.counts[status] / p.total : 0) + "%";
            n.className = "chart-n"; n.setAttribute("data-status", status); n.textContent = p.counts[status];
            row.append(label, bar, n);
            chart.appendChild(row);
          });
          var badge = document.getElementById("request-status");
          if (badge) badge.textContent = p.status.charAt(0).toUpperCase() + p.status.slice(1);
          if (p.active) setTimeout(poll, every);
          else box.setAttribute("data-active", "0");
        })
        .catch(function () { setTimeout(poll, every * 3); });
    };
    setTimeout(poll, every);
  }
})();
