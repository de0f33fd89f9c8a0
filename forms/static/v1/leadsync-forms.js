/*! leadsync-forms v1: posts <form data-leadsync> forms to leadsync as JSON. No dependencies.
 *
 * Why a script at all: the forms work without it (plain POST, 303 to the thank-you page). With it they
 * stay on the article, never double-submit (the button is disabled while sending and one Idempotency-Key
 * covers every retry of one fill), show field errors next to the fields, show the site's own success
 * message, and carry what a plain form cannot: UTM parameters, the page URL, the HubSpot `hubspotutk`
 * cookie (as `hutk`) and the render-time token (as `ts_token`) that tells people from bots.
 *
 * Usage: <script src="https://LEADSYNC/static/v1/leadsync-forms.js" defer></script> and
 *        <form method="post" action="https://LEADSYNC/forms/newsletter" data-leadsync> ... </form>
 * Forms added later: window.LeadsyncForms.enhance(form).
 */
(function () {
  "use strict";

  if (window.LeadsyncForms) return; // included twice: the first copy already runs
  if (!window.fetch || !window.FormData || !window.URLSearchParams) return; // old browser: plain forms

  var VERSION = "1.0.0";
  var UTM = ["utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content"];
  var UTM_STORE = "leadsync.utm";
  var TIMEOUT_MS = 20000;
  var TEXT = {
    required: "This field is required.",
    email: "Enter a valid email address.",
    check: "Please check the highlighted fields.",
    sending: "Sending\u2026",
    failed: "We could not send the form. Please check your connection and try again.",
    busy: "Many requests right now; trying again in a moment\u2026",
  };
  var RETRY_AFTER_MAX_S = 10; // a 503's Retry-After is honoured up to this; a person should not wait longer
  var SUCCESS = {
    newsletter: "You have Successfully Subscribed!",
    "info-packet": "Thanks for your interest!",
  };
  var counter = 0;
  var tokens = {}; // token URL -> {promise, token, receivedAt, maxAge}: one request per page, shared by its forms

  // ---------------------------------------------------------------- page context

  function newKey() {
    // randomUUID needs a secure context; the clinic's pages may be plain http.
    if (window.crypto && window.crypto.randomUUID) {
      try {
        return window.crypto.randomUUID();
      } catch (e) {
        /* fall through */
      }
    }
    var bytes = window.crypto.getRandomValues(new Uint8Array(16));
    return Array.prototype.map
      .call(bytes, function (b) {
        return (b < 16 ? "0" : "") + b.toString(16);
      })
      .join("");
  }

  function cookie(name) {
    var parts = document.cookie ? document.cookie.split("; ") : [];
    for (var i = 0; i < parts.length; i++) {
      var eq = parts[i].indexOf("=");
      if (parts[i].slice(0, eq) === name) {
        try {
          return decodeURIComponent(parts[i].slice(eq + 1));
        } catch (e) {
          return parts[i].slice(eq + 1);
        }
      }
    }
    return "";
  }

  /** UTM parameters of this URL, else of the page that started this visit (kept for the session). */
  function utmParams() {
    var query = new URLSearchParams(window.location.search);
    var found = {};
    var any = false;
    UTM.forEach(function (name) {
      var value = query.get(name);
      if (value) {
        found[name] = value;
        any = true;
      }
    });
    try {
      if (any) window.sessionStorage.setItem(UTM_STORE, JSON.stringify(found));
      else found = JSON.parse(window.sessionStorage.getItem(UTM_STORE) || "{}") || {};
    } catch (e) {
      /* storage disabled: this page's parameters only */
    }
    return found;
  }

  // ---------------------------------------------------------------- render-time token

  function tokenUrl(form) {
    return form.getAttribute("data-leadsync-token-url") || new URL("token", form.action).href;
  }

  function requestToken(url) {
    if (tokens[url]) return tokens[url];
    var entry = { token: "", receivedAt: 0, maxAge: 0 };
    entry.promise = fetch(url, { credentials: "omit", cache: "no-store" })
      .then(function (response) {
        return response.ok ? response.json() : null;
      })
      .then(function (data) {
        if (data && typeof data.token === "string") {
          entry.token = data.token;
          entry.receivedAt = Date.now();
          entry.maxAge = Number(data.max_age) || 0;
        }
        return entry;
      })
      .catch(function () {
        return entry; // no token: the post is accepted like any plain form post
      });
    tokens[url] = entry;
    return entry;
  }

  /** The token fetched when the form was rendered; "" when there is none or it has gone stale. */
  function currentToken(form) {
    var rendered = form.elements.namedItem("ts_token");
    if (rendered && rendered.value) return Promise.resolve(rendered.value);
    var entry = requestToken(tokenUrl(form));
    var timeout = new Promise(function (resolve) {
      setTimeout(resolve, 3000);
    });
    return Promise.race([entry.promise, timeout]).then(function () {
      var stale = entry.maxAge && Date.now() - entry.receivedAt > entry.maxAge * 900; // 90% of max age, in ms
      return stale ? "" : entry.token; // a fresh one would be "too fast": sending none is accepted
    });
  }

  // ---------------------------------------------------------------- messages and errors

  /** `hidden` alone loses to any site rule that sets `display`; the inline style does not. */
  function show(element, visible) {
    element.hidden = !visible;
    element.style.display = visible ? "" : "none";
  }

  function status(form) {
    var element = form.querySelector("[data-leadsync-status]");
    if (!element) {
      element = document.createElement("p");
      element.setAttribute("data-leadsync-status", "");
      form.appendChild(element);
    }
    if (!element.id) element.id = form.getAttribute("data-leadsync-id") + "-status";
    element.className = element.className || "leadsync-status";
    element.setAttribute("role", "status");
    element.setAttribute("aria-live", "polite");
    element.setAttribute("tabindex", "-1");
    return element;
  }

  function setStatus(form, text, kind) {
    var element = status(form);
    element.textContent = text;
    element.setAttribute("data-kind", kind || "");
    return element;
  }

  function field(form, name) {
    var item = form.elements.namedItem(name);
    if (item && !(item instanceof Element) && item.length) item = item[0]; // radio group or repeated name
    if (!item || item.type === "hidden" || name === "website") return null;
    return item;
  }

  function describedBy(element, id, add) {
    var ids = (element.getAttribute("aria-describedby") || "").split(/\s+/).filter(function (value) {
      return value && value !== id;
    });
    if (add) ids.push(id);
    if (ids.length) element.setAttribute("aria-describedby", ids.join(" "));
    else element.removeAttribute("aria-describedby");
  }

  function errorElement(form, input, name) {
    var element = form.querySelector('[data-leadsync-error-for="' + name + '"]');
    if (!element) {
      element = document.createElement("span");
      element.className = "leadsync-error";
      element.setAttribute("data-leadsync-error-for", name);
      // After the control, or after the label that wraps it (checkboxes).
      var anchor = input.closest("label") || input;
      anchor.insertAdjacentElement("afterend", element);
    }
    if (!element.id) element.id = form.getAttribute("data-leadsync-id") + "-" + name + "-error";
    return element;
  }

  function clearError(form, input) {
    if (!input || !input.name) return;
    var element = form.querySelector('[data-leadsync-error-for="' + input.name + '"]');
    input.removeAttribute("aria-invalid");
    if (element) {
      element.textContent = "";
      show(element, false);
      describedBy(input, element.id, false);
    }
  }

  function clearErrors(form) {
    Array.prototype.forEach.call(form.elements, function (input) {
      clearError(form, input);
    });
  }

  /** Each message next to its field (aria-invalid + aria-describedby); the rest in the status line. */
  function showErrors(form, errors) {
    clearErrors(form);
    var first = null;
    var general = [];
    Object.keys(errors).forEach(function (name) {
      var input = field(form, name);
      if (!input) {
        general.push(errors[name]);
        return;
      }
      var element = errorElement(form, input, name);
      element.textContent = errors[name];
      show(element, true);
      input.setAttribute("aria-invalid", "true");
      describedBy(input, element.id, true);
      first = first || input;
    });
    var line = setStatus(form, general.length ? general.join(" ") : TEXT.check, "error");
    (first || line).focus(); // the field says what is wrong through aria-describedby
  }

  /** The browser's own checks (required, type=email), in the server's words, before any request. */
  function clientErrors(form) {
    var errors = {};
    Array.prototype.forEach.call(form.elements, function (input) {
      if (!input.name || !input.willValidate || input.validity.valid || errors[input.name]) return;
      if (input.validity.valueMissing) errors[input.name] = TEXT.required;
      else if (input.validity.typeMismatch && input.type === "email") errors[input.name] = TEXT.email;
      else errors[input.name] = input.validationMessage;
    });
    return errors;
  }

  // ---------------------------------------------------------------- sending

  function payload(form, token) {
    var data = {};
    new FormData(form).forEach(function (value, name) {
      if (typeof value === "string" && !(name in data)) data[name] = value;
    });
    // Cut to leadsync's limits: a visitor cannot correct a field they never see.
    if (!data.page_url) data.page_url = window.location.href.split("#")[0].slice(0, 2048);
    if (!data.page_title && document.title) data.page_title = document.title.slice(0, 300);
    var utm = utmParams();
    UTM.forEach(function (name) {
      if (!data[name] && utm[name]) data[name] = String(utm[name]).slice(0, 255);
    });
    var hutk = cookie("hubspotutk");
    if (hutk && !data.hutk) data.hutk = hutk.slice(0, 128);
    if (token) data.ts_token = token;
    return data;
  }

  function buttons(form) {
    return form.querySelectorAll('button:not([type]), button[type="submit"], input[type="submit"]');
  }

  function setBusy(form, busy) {
    Array.prototype.forEach.call(buttons(form), function (button) {
      button.disabled = busy;
    });
    if (busy) form.setAttribute("aria-busy", "true");
    else form.removeAttribute("aria-busy");
  }

  function post(form, key, data) {
    var controller = window.AbortController ? new AbortController() : null;
    var timer = controller
      ? setTimeout(function () {
          controller.abort();
        }, TIMEOUT_MS)
      : null;
    return fetch(form.action, {
      method: "POST",
      mode: "cors",
      credentials: "omit",
      headers: { "Content-Type": "application/json", Accept: "application/json", "Idempotency-Key": key },
      body: JSON.stringify(data),
      signal: controller ? controller.signal : undefined,
    })
      .then(function (response) {
        return response
          .json()
          .catch(function () {
            return null;
          })
          .then(function (body) {
            return { status: response.status, body: body || {}, retryAfter: response.headers.get("Retry-After") };
          });
      })
      .finally(function () {
        if (timer) clearTimeout(timer);
      });
  }

  function formName(form) {
    var path = new URL(form.action).pathname;
    return path.slice(path.lastIndexOf("/") + 1);
  }

  function succeed(form, state, message) {
    state.key = null; // the next fill is a new submission with a new key
    form.reset();
    clearErrors(form);
    var text = form.getAttribute("data-leadsync-success") || message || SUCCESS[formName(form)] || "Thank you!";
    var element = setStatus(form, text, "success");
    form.setAttribute("data-leadsync-state", "sent");
    // Like the site's own forms: the message replaces the fields; headings stay.
    Array.prototype.forEach.call(form.children, function (child) {
      if (child !== element && !child.contains(element) && !/^H[1-6]$/.test(child.tagName)) show(child, false);
    });
    element.focus();
  }

  /** Seconds from a Retry-After header (seconds or an HTTP date), 1 to RETRY_AFTER_MAX_S, plus up to 0.5 s
   *  of jitter so the visitors turned away together do not come back together. */
  function retryDelayMs(header) {
    var seconds = Number(header);
    if (!isFinite(seconds)) seconds = (Date.parse(header) - Date.now()) / 1000;
    if (!isFinite(seconds)) seconds = 1;
    seconds = Math.min(RETRY_AFTER_MAX_S, Math.max(1, seconds));
    return seconds * 1000 + Math.random() * 500;
  }

  function send(form, state, retried, waited) {
    return currentToken(form)
      .then(function (token) {
        return post(form, state.key, payload(form, token));
      })
      .then(function (answer) {
        var errors = answer.body.errors;
        if (answer.status >= 200 && answer.status < 300) return succeed(form, state, answer.body.message);
        if (answer.status === 422 && errors && errors["Idempotency-Key"] && !retried) {
          // The key was spent on an earlier, different fill whose answer never arrived: a new fill.
          state.key = newKey();
          return send(form, state, true, waited);
        }
        if (answer.status === 503 && !waited) {
          // Shed under load (nothing was stored): once more after Retry-After, with the same Idempotency-Key.
          setStatus(form, TEXT.busy, "sending");
          return new Promise(function (resolve) {
            setTimeout(resolve, retryDelayMs(answer.retryAfter));
          }).then(function () {
            return send(form, state, retried, true);
          });
        }
        showErrors(form, errors && typeof errors === "object" ? errors : { form: TEXT.failed });
      });
  }

  function onSubmit(form, state, event) {
    event.preventDefault();
    if (state.sending) return; // a second click or Enter while the first is on its way
    var errors = clientErrors(form);
    if (Object.keys(errors).length) {
      showErrors(form, errors);
      return;
    }
    clearErrors(form);
    state.sending = true;
    state.key = state.key || newKey(); // kept until success: a retry after a lost answer is the same submission
    setBusy(form, true);
    setStatus(form, TEXT.sending, "sending");
    send(form, state, false, false)
      .catch(function () {
        var element = setStatus(form, TEXT.failed, "error");
        element.focus();
      })
      .finally(function () {
        state.sending = false;
        setBusy(form, false);
      });
  }

  // ---------------------------------------------------------------- wiring

  function honeypot(form) {
    if (form.elements.namedItem("website")) return;
    var wrapper = document.createElement("div");
    wrapper.setAttribute("aria-hidden", "true");
    wrapper.style.cssText = "position:absolute;left:-10000px;width:1px;height:1px;overflow:hidden";
    wrapper.innerHTML = '<label>Website <input name="website" tabindex="-1" autocomplete="off"></label>';
    form.appendChild(wrapper);
  }

  function enhance(form) {
    if (form.hasAttribute("data-leadsync-id")) return;
    counter += 1;
    form.setAttribute("data-leadsync-id", form.id || "leadsync-" + counter);
    var state = { key: null, sending: false };
    form.noValidate = true; // our messages, next to the fields, in the server's words
    honeypot(form);
    status(form);
    requestToken(tokenUrl(form));
    form.addEventListener("submit", function (event) {
      onSubmit(form, state, event);
    });
    form.addEventListener("input", function (event) {
      if (event.target.getAttribute && event.target.getAttribute("aria-invalid")) clearError(form, event.target);
    });
    form.setAttribute("data-leadsync-state", "ready");
  }

  function enhanceAll(root) {
    Array.prototype.forEach.call((root || document).querySelectorAll("form[data-leadsync]"), function (form) {
      try {
        enhance(form);
      } catch (e) {
        /* this form stays a plain HTML form, which still works */
      }
    });
  }

  window.LeadsyncForms = { version: VERSION, enhance: enhance, enhanceAll: enhanceAll };
  utmParams(); // remember the landing page's UTM parameters for the rest of the visit
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () {
      enhanceAll();
    });
  } else {
    enhanceAll();
  }
})();
