/* Compose and template pages: editors, live checks and preview, the live recipient verdict. Vanilla JS.
 * Every page still works without it: the server makes the HTML body and checks everything on save. */
(function () {
  "use strict";

  var form = document.querySelector("form[data-check-url]");
  if (!form) return;

  function field(name) { return form.querySelector("[name=" + name + "]"); }
  function chosen(name) {
    var el = form.querySelector("[name=" + name + "]:checked") || form.querySelector("select[name=" + name + "]");
    return el ? el.value : "";
  }
  function debounce(fn, ms) {
    var timer = null;
    return function () { clearTimeout(timer); timer = setTimeout(fn, ms); };
  }
  function post(url) {
    return fetch(url, { method: "POST", body: new FormData(form), credentials: "same-origin" })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); });
  }
  function li(text, cls) {
    var el = document.createElement("li");
    el.className = cls || "warn";
    el.textContent = text;
    return el;
  }

  // --- "Start from" loads a new page: what was typed here would be lost without a word.
  var typed = false;
  form.addEventListener("input", function () { typed = true; });
  var startFrom = document.getElementById("start-from");
  if (startFrom) startFrom.addEventListener("submit", function (event) {
    if (typed && !window.confirm("Start from this template? It replaces everything typed in the form below.")) event.preventDefault();
  });

  // --- The error summary: a link to a field in a hidden section shows that section first.
  document.querySelectorAll("#error-summary a[href^='#']").forEach(function (link) {
    link.addEventListener("click", function (event) {
      var target = document.getElementById(link.getAttribute("href").slice(1));
      if (!target) return;
      event.preventDefault();
      for (var el = target; el && el !== form; el = el.parentElement) {
        if (el.hasAttribute("data-source")) {
          var radio = form.querySelector("[name=source][value=" + el.getAttribute("data-source").split(" ")[0] + "]");
          if (radio) { radio.checked = true; showSource(); }
        }
        el.hidden = false;
      }
      target.scrollIntoView({ block: "center" });
      var input = target.querySelector("input, textarea, select");
      if (input) input.focus();
    });
  });
  var summary = document.getElementById("error-summary");
  if (summary) summary.focus();

  var scheduleCheck = debounce(function () { check(); }, 500);  // check() is below

  // --- Editors: raw HTML, rich text (Quill) or Markdown (the text body; the server makes the HTML).
  var text = field("text_body"), html = field("html_body");
  var textLabel = form.querySelector("label[for=id_text_body]");
  var textLabelPlain = textLabel ? textLabel.textContent : "";
  var htmlField = document.getElementById("field-html_body");
  var richBox = document.getElementById("rich-editor");
  var quill = null;
  var lastField = text;
  var format = chosen("body_format") || "html";

  function richHTML() {
    if (!quill || !quill.getText().trim()) return "";
    return quill.getSemanticHTML().replace(/&nbsp;/g, " ");
  }
  function startRich() {
    if (!richBox || !window.Quill) return false;
    if (!quill) {
      quill = new window.Quill(richBox, {
        theme: "snow",
        modules: { toolbar: [[{ header: [1, 2, 3, false] }], ["bold", "italic", "underline", "link"],
                             [{ list: "ordered" }, { list: "bullet" }], ["blockquote"], ["clean"]] }
      });
      quill.on("text-change", function () { html.value = richHTML(); scheduleCheck(); });
      quill.root.addEventListener("focus", function () { lastField = "rich"; });
    }
    quill.setContents([]);
    if (html.value.trim()) quill.clipboard.dangerouslyPasteHTML(html.value);
    html.value = richHTML();
    return true;
  }
  function showFormat() {
    if (htmlField) htmlField.hidden = format !== "html";
    if (richBox) richBox.parentElement.hidden = format !== "rich";
    if (textLabel) {
      textLabel.textContent = format === "markdown" ? "Markdown (sent as the text part; the HTML part is made from it)" : textLabelPlain;
    }
  }
  form.querySelectorAll("[name=body_format]").forEach(function (radio) {
    radio.addEventListener("change", function () {
      var next = chosen("body_format");
      var complex = /<(table|style|html|body|div)\b/i.test(html.value);
      if (next === "rich" && format === "html" && complex &&
          !window.confirm("The rich-text editor keeps text, headings, lists and links. This HTML's layout (tables, styles) would be lost. Switch?")) {
        form.querySelector("[name=body_format][value=" + format + "]").checked = true;
        return;
      }
      if (next === "markdown" && html.value.trim() && !text.value.trim() &&
          !window.confirm("With Markdown, the HTML part is made from what you write in the text body; the current HTML body will be replaced. Switch?")) {
        form.querySelector("[name=body_format][value=" + format + "]").checked = true;
        return;
      }
      format = next;
      if (format === "rich" && !startRich()) format = "html";
      showFormat();
      scheduleCheck();
    });
  });
  if (format === "rich") startRich();
  showFormat();

  // --- Variables: inserted at the cursor of the last field used (or the rich-text editor).
  form.querySelectorAll("textarea, input[type=text]").forEach(function (el) {
    el.addEventListener("focus", function () { lastField = el; });
  });
  var varList = document.getElementById("variables");
  if (varList) {
    varList.addEventListener("click", function (event) {
      var button = event.target.closest("[data-insert]");
      if (!button) return;
      var insert = button.getAttribute("data-insert");
      if (lastField === "rich" && quill) {
        var range = quill.getSelection(true);
        quill.insertText(range ? range.index : quill.getLength(), insert, "user");
        return;
      }
      var target = lastField && lastField.tagName ? lastField : text;
      var start = target.selectionStart || 0, end = target.selectionEnd || 0;
      target.value = target.value.slice(0, start) + insert + target.value.slice(end);
      target.focus();
      target.selectionStart = target.selectionEnd = start + insert.length;
      target.dispatchEvent(new Event("input", { bubbles: true }));
    });
  }
  function addVariables(names) {
    if (!varList) return;
    (names || []).forEach(function (name) {
      var insert = "{{ " + name + " }}";
      if (varList.querySelector('[data-insert="' + insert + '"]')) return;
      var item = document.createElement("li"), button = document.createElement("button");
      button.type = "button"; button.className = "var"; button.setAttribute("data-insert", insert); button.textContent = name;
      item.appendChild(button);
      varList.appendChild(item);
    });
  }

  // --- Template check while typing: the errors saving would give, and the preview as rendered.
  var frame = document.getElementById("live-preview");
  var previewText = document.getElementById("live-preview-text");
  var previewSubject = document.getElementById("live-preview-subject");
  var checkSerial = 0;
  function liveError(name) {
    var box = document.getElementById("field-" + name);
    if (!box) return null;
    var el = box.querySelector(".live-error");
    if (!el) {
      el = document.createElement("p");
      el.className = "error live-error";
      el.setAttribute("role", "status");
      el.id = "live-error-" + name;
      box.appendChild(el);
    }
    return el;
  }
  function check() {
    var mine = ++checkSerial;
    post(form.getAttribute("data-check-url")).then(function (data) {
      if (mine !== checkSerial) return;
      var errors = data.errors || {};
      // Where each error shows: a Markdown body's errors belong to the text body it is written in.
      var shown = {
        subject: errors.subject,
        text_body: errors.text_body || (format === "markdown" ? errors.html_body : ""),
        html_body: format === "html" ? errors.html_body : "",
        rich: format === "rich" ? errors.html_body : ""
      };
      Object.keys(shown).forEach(function (name) {
        var el = liveError(name);
        if (!el) return;
        // The live check now speaks for the templates: the saved page's own template errors would repeat it.
        el.parentElement.querySelectorAll("p.error:not(.live-error)").forEach(function (old) {
          if (/^Template error/.test(old.textContent)) old.hidden = true;
        });
        el.textContent = shown[name] || "";
        el.hidden = !shown[name];
      });
      // Variables nothing fills: a warning, not an error (saving still works; they render empty).
      var warnings = document.getElementById("live-warnings");
      if (warnings) {
        warnings.textContent = "";
        (data.warnings || []).forEach(function (text) { warnings.appendChild(li(text, "warn")); });
        warnings.hidden = !(data.warnings && data.warnings.length);
      }
      if (data.preview) {
        if (frame) frame.srcdoc = data.preview.html || "<p style='font-family:sans-serif;color:#656d76'>No HTML part: only the text is sent.</p>";
        if (previewText) previewText.textContent = data.preview.text;
        if (previewSubject) previewSubject.textContent = data.preview.subject;
      } else if (data.preview_error && previewText) {
        previewText.textContent = data.preview_error;
      }
    }).catch(function () { /* the next keystroke tries again; saving checks anyway */ });
  }
  form.addEventListener("input", function (event) {
    if (/^(subject|text_body|html_body)$/.test(event.target.name)) scheduleCheck();
  });
  check();

  // --- Who gets it: the verdict saving would give (the form's own code, on the server).
  var countUrl = form.getAttribute("data-count-url");
  if (!countUrl) return;
  var countEl = document.getElementById("audience-count");
  var notesEl = document.getElementById("audience-notes");
  // The page's own note says why the count may be below the set's size (suppressed, inactive, repeats): it stays.
  var countNote = notesEl.querySelector("p");
  var countSerial = 0;

  // Which sets read parameters, each with its example ("" when it gives none): the form lists them.
  function paramsHelp() {
    var el = form.querySelector("[data-params-help]");
    try { return el ? JSON.parse(el.getAttribute("data-params-help")) : {}; } catch (e) { return {}; }
  }
  function showSource() {
    var source = chosen("source"), set = chosen("recipient_set");
    form.querySelectorAll("[data-source]").forEach(function (el) {
      el.hidden = el.getAttribute("data-source").split(" ").indexOf(source) === -1;
    });
    var asks = paramsHelp();
    form.querySelectorAll("[data-set]").forEach(function (el) {
      el.hidden = el.getAttribute("data-set") === "groups" ? set !== "groups" : !(set in asks);
    });
    var params = form.querySelector("[data-params-help]");
    if (params) {
      if (!params.hasAttribute("data-placeholder")) params.setAttribute("data-placeholder", params.placeholder);
      params.placeholder = asks[set] || params.getAttribute("data-placeholder");
    }
  }
  function count() {
    var mine = ++countSerial;
    countEl.textContent = "…";
    post(countUrl).then(function (data) {
      if (mine !== countSerial) return;
      var list = document.createElement("ul");
      list.className = "warnings";
      countEl.textContent = data.count === null ? "–" : Number(data.count).toLocaleString("en");
      if (data.errors && data.errors.length) list.appendChild(li("Saving would refuse this: " + data.errors[0].replace(/:$/, "."), "warn bad"));
      if (data.bad && data.bad.length) {
        var bad = document.createElement("li");
        bad.className = "warn bad-lines";
        bad.appendChild(document.createTextNode((data.ok ? "Left out " : "Bad ") + "(" + data.bad.length + (data.bad.length >= 50 ? "+" : "") + "):"));
        var lines = document.createElement("ul");
        data.bad.forEach(function (line) { lines.appendChild(li(line, "")); });
        bad.appendChild(lines);
        list.appendChild(bad);
      }
      if (data.count !== null) {
        addVariables(data.columns);
        if (data.large) list.appendChild(li("Large send: more than " + data.large_threshold + " addresses."));
        if (data.invalid_count) list.appendChild(li(data.invalid_count + " cannot be mailed: " + data.invalid.join(", ")));
        Object.keys(data.empty || {}).forEach(function (name) {
          var e = data.empty[name];
          list.appendChild(li(e.count + " would get an empty {{ " + name + " }}, e.g. " + e.examples.join(", ")));
        });
        if (!data.count) list.appendChild(li("Nobody would get this mail."));
      }
      if (countNote) notesEl.replaceChildren(countNote, list); else notesEl.replaceChildren(list);
    }).catch(function () { if (mine === countSerial) countEl.textContent = "?"; });
  }
  var scheduleCount = debounce(count, 400);
  form.addEventListener("change", function (event) {
    if (event.target.name === "source" || event.target.name === "recipient_set") showSource();
    if (!/^(new_attachments|remove_attachments|pending_attachments|body_format)$/.test(event.target.name)) scheduleCount();
  });
  form.addEventListener("input", function (event) {
    if (/^(addresses|params|subject|text_body|html_body)$/.test(event.target.name)) scheduleCount();
  });
  showSource();
  count();
})();
