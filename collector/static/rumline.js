/*! rumline.js, the rumline browser agent: see docs/agents.md */
(function (w) {
  "use strict";
  if (w.rumline && w.rumline.version) return;
  var d = w.document, nav = w.navigator, loc = w.location, perf = w.performance;
  var hist = w.history, origFetch = w.fetch, XHR = w.XMLHttpRequest, JSONs = JSON.stringify;
  var KEY = "rumline.sid", VKEY = "rumline.vid";
  // sendBeacon and keepalive fetch share a 64 KiB in-flight quota per page.
  var MAX_BYTES = 58000, MAX_EVENTS = 200, MAX_RESOURCES = 150;
  var cfg = null, queue = [], seq = 0, sid = null, timer = 0, memo = {}, loadSent = false, ended;
  var lastRoute = "", current = null, rage = null, rageTimer = 0, vitals = {}, reported = {};
  var script = d && d.currentScript, chain = w.Promise && Promise.resolve(), waiting = [];

  function guard(fn) {
    return function () { try { return fn.apply(this, arguments); } catch (e) { /**/ } };
  }
  function now() { return Date.now(); }
  function pnow() { return perf.now(); }
  function round(x) { return Math.round(x || 0); }
  function epoch(t) { return round(perf.timeOrigin + t); }
  function str(x, n) { x = x == null ? "" : String(x); return x.length > n ? x.slice(0, n) : x; }
  function hex(bytes) {
    var a = new Uint8Array(bytes), s = "", i;
    w.crypto.getRandomValues(a);
    for (i = 0; i < bytes; i++) s += (a[i] < 16 ? "0" : "") + a[i].toString(16);
    return /^0+$/.test(s) ? hex(bytes) : s;
  }
  function url(u) { try { return new URL(u, loc.href); } catch (e) { return null; } }
  function dnt() { return nav.doNotTrack === "1" || nav.globalPrivacyControl === true; }
  function store(key, value) {
    try {
      var s = w[key === VKEY ? "localStorage" : "sessionStorage"];
      if (value === undefined) return JSON.parse(s.getItem(key));
      s.setItem(key, JSONs(value));
    } catch (e) { /* storage off: memory */ }
    if (value === undefined) return memo[key];
    memo[key] = value;
  }

  // {id, t: last activity, u: user tag}; 30 min inactivity as on the server
  function session() {
    var s = store(KEY), t = now();
    if (!s || !s.id || t - s.t > cfg.sessionTimeout) s = {id: hex(16), t: t};
    s.t = t;
    store(KEY, s);
    return s;
  }

  function push(ev) {
    if (!cfg) return;
    // After endSession a late vital must not open a new session.
    if (ev.type !== "vital") ended = false; else if (ended) return;
    var s = session();
    if (sid && s.id !== sid) send(false);
    sid = s.id;
    queue.push(ev);
    if (queue.length >= 50) send(false);
    else if (!timer) timer = setTimeout(guard(function () { send(false); }), cfg.flushInterval);
  }
  function bytes(s) { return encodeURIComponent(s).replace(/%../g, "x").length; }
  function fetchNow(body, keep) {
    // text/plain: no CORS preflight. Over the keepalive quota fetch fails: retry without.
    return origFetch.call(w, cfg.endpoint, {method: "POST", body: body, keepalive: !keep,
      credentials: "omit", headers: {"Content-Type": "text/plain;charset=UTF-8"}})
      .catch(function () { if (!keep) return fetchNow(body, 1); });
  }
  function post(body, unloading) {
    waiting.push(body);
    if (unloading && nav.sendBeacon) {
      waiting.splice(0).forEach(function (b) { if (!nav.sendBeacon(cfg.endpoint, b)) fetchNow(b); });
    } else {
      // One at a time: an end event must not overtake the beacons before it.
      chain = chain.then(function () { return waiting.length && fetchNow(waiting.shift()); });
    }
  }
  function send(unloading) {
    clearTimeout(timer);
    timer = 0;
    if (!cfg || !queue.length) return;
    var events = queue, s = store(KEY) || {}, chunk = [], size = 0, i, e;
    queue = [];
    var head = {v: 1, app: cfg.app, sid: sid, vid: cfg.vid,
      page: {url: loc.href, referrer: d.referrer || undefined},
      device: {screen: screen.width + "x" + screen.height, lang: nav.language}};
    if (s.u && !dnt()) head.user = s.u;
    function flush() {
      if (!chunk.length) return;
      head.seq = ++seq;
      head.sent = now();
      head.events = [];
      post(JSONs(head).slice(0, -2) + chunk.join(",") + "]}", unloading);
      chunk = [];
      size = 0;
    }
    for (i = 0; i < events.length; i++) {
      var ev = events[i], r = ev.resources, n;
      // A load with a long waterfall: halve its resources until it fits one beacon.
      while ((n = bytes(e = JSONs(ev))) > MAX_BYTES && r && r.length) r = ev.resources = r.slice(0, r.length >> 1);
      if (n > MAX_BYTES) continue;
      if (size + n > MAX_BYTES || chunk.length >= MAX_EVENTS) flush();
      chunk.push(e);
      size += n + 1;
    }
    flush();
  }

  // A click or route change lasts until its requests end and a frame is painted.
  function begin(type, name, extra) {
    var a = {ev: {type: type, name: name, start: now()}, t0: pnow(), pending: 0, end: 0};
    Object.assign(a.ev, extra);
    current = a;
    var painted = guard(function () { a.painted = a.painted || pnow(); settle(a); });
    w.requestAnimationFrame(function () { setTimeout(painted, 0); });
    setTimeout(painted, 100); // rAF does not run in a hidden tab
    setTimeout(guard(function () { finish(a); }), 30000);
    return a;
  }
  function settle(a) { if (!a.pending && a.painted) finish(a); }
  function finish(a) {
    if (a.done) return;
    a.done = true;
    if (current === a) current = null;
    a.ev.dur = round(Math.max(a.end, a.painted || pnow()) - a.t0);
    push(a.ev);
  }

  function skipped(u) { return !u || /^(data|blob):/.test(u.protocol) || u.href.split("?")[0] === cfg.endpoint.split("?")[0]; }
  function traced(u) {
    return u.origin === loc.origin || cfg.traceOrigins.some(function (o) {
      return o.test ? o.test(u.href) : u.href.indexOf(o) === 0;
    });
  }
  function request(method, u, tp) {
    var r = {u: u, method: String(method || "GET").toUpperCase(), start: now(), t0: pnow(), tp: tp};
    if (!tp && traced(u)) r.tp = r.add = "00-" + hex(16) + "-" + hex(8) + "-01";
    var a = current;
    if (a && !a.done) {
      r.action = a;
      a.pending++;
      // Errors go to the latest action around them: start a click before its requests.
      if (a.ev.start >= r.start) { a.ev.start = r.start - 1; a.t0--; }
    }
    return r;
  }
  function requestEnd(r, status, failure) {
    var dur = round(pnow() - r.t0), path = (r.u.origin === loc.origin ? "" : r.u.origin) + r.u.pathname;
    var ev = {type: "xhr", name: r.method + " " + path, url: r.u.href, method: r.method,
      status: status, start: r.start, dur: dur};
    if (r.tp) ev.traceparent = r.tp;
    push(ev);
    if (status >= 400 || !status) {
      push({type: "error", kind: "request", start: r.start + dur,
        message: r.method + " " + path + " " + (status || "failed" + (failure ? ": " + failure : ""))});
    }
    var a = r.action;
    if (a) { a.pending--; a.end = pnow(); settle(a); }
  }
  function instrumentRequests() {
    var end = guard(requestEnd);
    if (XHR) {
      var P = XHR.prototype, open = P.open, sendX = P.send, setH = P.setRequestHeader;
      P.open = function (m, u) {
        try { this.__rl = {m: m, u: url(u)}; } catch (e) { /**/ }
        return open.apply(this, arguments);
      };
      P.setRequestHeader = function (k, v) {
        try { if (this.__rl && /^traceparent$/i.test(k)) this.__rl.tp = v; } catch (e) { /**/ }
        return setH.apply(this, arguments);
      };
      P.send = function () {
        var x = this, o = x.__rl;
        try {
          if (o && !skipped(o.u)) {
            var r = request(o.m, o.u, o.tp);
            if (r.add) setH.call(x, "traceparent", r.add);
            x.addEventListener("loadend", function () { end(r, x.status); });
          }
        } catch (e) { /**/ }
        return sendX.apply(this, arguments);
      };
    }
    if (origFetch) {
      w.fetch = function (input, init) {
        var r = null;
        try {
          var isReq = w.Request && input instanceof w.Request, u = url(isReq ? input.url : input);
          if (!skipped(u)) {
            var h = new w.Headers((init && init.headers) || (isReq ? input.headers : undefined));
            r = request((init && init.method) || (isReq && input.method), u, h.get("traceparent"));
            if (r.add) {
              h.set("traceparent", r.add);
              init = Object.assign({}, init, {headers: h});
            }
          }
        } catch (e) { r = null; }
        var p = origFetch.call(w, input, init);
        if (!r) return p;
        return p.then(function (res) {
          end(r, res.status);
          return res;
        }, function (err) {
          end(r, 0, err && err.message);
          throw err;
        });
      };
    }
  }

  var ACTIONABLE = "a,button,input[type=button],input[type=submit],[role=button],[role=link],label,summary,[data-rumline-name],[onclick]";
  function label(el) {
    var t = el.getAttribute("data-rumline-name") || el.getAttribute("aria-label") ||
      el.innerText || el.value || el.title || el.id || el.tagName;
    return str(String(t).replace(/\s+/g, " ").trim(), 60);
  }
  function selector(el) {
    var s = str(el.tagName).toLowerCase(), c = el.classList && el.classList[0];
    return el.id ? s + "#" + el.id : c ? s + "." + c : s;
  }
  function closeRage() {
    clearTimeout(rageTimer);
    if (rage && rage.rage) push({type: "rage_click", target: rage.target, count: rage.t.length, start: rage.start});
    rage = null;
  }
  function onClick(e) {
    var t = pnow(), x = e.clientX || 0, y = e.clientY || 0;
    var n = rage && rage.t.length;
    if (n && t - rage.t[n - 1] < 1000 && Math.abs(x - rage.x) < 30 && Math.abs(y - rage.y) < 30) {
      n = rage.t.push(t);
      if (n > 2 && t - rage.t[n - 3] <= 1000) rage.rage = true;
    } else {
      closeRage();
      rage = {t: [t], x: x, y: y, start: now(), target: selector(e.target)};
    }
    rageTimer = setTimeout(guard(closeRage), 1000);
    var el = e.target && e.target.closest && e.target.closest(ACTIONABLE);
    if (el) begin("custom", "click on '" + label(el) + "'");
  }
  function route() {
    var r = loc.pathname + loc.search;
    if (r === lastRoute) return;
    lastRoute = r;
    send(false); // queued events belong to the previous page.url
    begin("load", "loading of page " + loc.pathname, {url: loc.href, timing: {spa: 1}});
  }
  function instrumentHistory() {
    ["pushState", "replaceState"].forEach(function (m) {
      var orig = hist && hist[m];
      if (!orig) return;
      hist[m] = function () {
        var out = orig.apply(this, arguments);
        guard(route)();
        return out;
      };
    });
    w.addEventListener("popstate", guard(route));
  }

  function jsError(err, message, where, kind) {
    var m = err && err.message !== undefined ? (err.name || "Error") + ": " + err.message : String(message || err);
    push({type: "error", kind: kind || "js", message: str(m, 1024),
      stack: str((err && err.stack) || where, 8192), start: now()});
  }

  function pageLoad() {
    if (loadSent) return;
    loadSent = true;
    var n = perf.getEntriesByType("navigation")[0] || {}, end = n.loadEventEnd || pnow(), resources = [], fcp = vitals.FCP;
    var timing = {ttfb: n.responseStart, dns: n.domainLookupEnd - n.domainLookupStart,
      connect: n.connectEnd - n.connectStart, request: n.responseStart - n.requestStart,
      response: n.responseEnd - n.responseStart, dom_interactive: n.domInteractive,
      dom_content_loaded: n.domContentLoadedEventEnd, dom_complete: n.domComplete,
      load_end: n.loadEventEnd, transfer_size: n.transferSize, fcp: fcp && fcp.value};
    for (var k in timing) timing[k] = timing[k] >= 0 ? round(timing[k]) : undefined;
    if (cfg.resources) {
      var list = perf.getEntriesByType("resource");
      for (var i = 0; i < list.length && resources.length < MAX_RESOURCES; i++) {
        var r = list[i], u = url(r.name);
        if (r.startTime > end || skipped(u)) continue;
        resources.push({url: r.name, initiator: r.initiatorType, start: round(r.startTime),
          dur: round(r.duration), size: r.transferSize, status: r.responseStatus || undefined});
      }
    }
    push({type: "load", name: "loading of page " + loc.pathname, url: loc.href,
      start: epoch(n.startTime || 0), dur: round(end), timing: timing, resources: resources});
    if (n.responseStart) { vital("TTFB", n.responseStart, 0); reportVitals(["TTFB"]); }
  }
  function vital(name, value, at) {
    vitals[name] = {value: name === "CLS" ? +value.toFixed(4) : round(value), at: at};
  }
  function reportVitals(names) {
    names.forEach(function (name) {
      var v = vitals[name];
      if (v && reported[name] !== v.value) {
        reported[name] = v.value;
        push({type: "vital", name: name, value: v.value, start: epoch(v.at)});
      }
    });
  }
  function observe(type, fn, opts) {
    try {
      var o = new w.PerformanceObserver(guard(function (l) { l.getEntries().forEach(fn); }));
      opts = opts || {};
      opts.type = type;
      opts.buffered = true;
      o.observe(opts);
    } catch (e) { /**/ }
  }
  function instrumentVitals() {
    var cls = 0, win = 0, winFirst = 0, winLast = 0, inter = {};
    observe("paint", function (e) {
      if (e.name === "first-contentful-paint") { vital("FCP", e.startTime, e.startTime); reportVitals(["FCP"]); }
    });
    observe("largest-contentful-paint", function (e) { vital("LCP", e.startTime, e.startTime); });
    observe("layout-shift", function (e) {
      if (e.hadRecentInput) return;
      // CLS: the largest session window (gaps < 1 s, at most 5 s).
      if (win && e.startTime - winLast < 1000 && e.startTime - winFirst < 5000) win += e.value;
      else { win = e.value; winFirst = e.startTime; }
      winLast = e.startTime;
      cls = Math.max(cls, win);
      vital("CLS", cls, e.startTime);
    });
    vital("CLS", 0, 0);
    function interaction(e) {
      var id = e.interactionId || (e.entryType === "first-input" ? -1 : 0);
      if (!id) return;
      inter[id] = Math.max(inter[id] || 0, e.duration);
      // INP ~ p98: the worst interaction per 50.
      var all = Object.keys(inter).map(function (k) { return inter[k]; }).sort(function (a, b) { return b - a; });
      vital("INP", all[Math.min(all.length - 1, Math.floor(all.length / 50))], e.startTime);
    }
    observe("event", interaction, {durationThreshold: 16});
    observe("first-input", interaction);
  }

  function leaving(unload) {
    if (current) finish(current);
    if (!loadSent && d.readyState !== "loading") pageLoad();
    closeRage();
    reportVitals(Object.keys(vitals));
    if (unload) send(true);
  }

  var api = {
    version: "1",
    init: guard(function (options) {
      if (cfg) return;
      var o = options || {}, src = script && script.src;
      if (!o.app) return;
      cfg = {
        app: String(o.app),
        endpoint: String((url(o.endpoint || (src ? new URL("/beacon", src).href : "/beacon")) || {}).href),
        traceOrigins: o.traceOrigins || [],
        sessionTimeout: o.sessionTimeout || 1800000,
        flushInterval: o.flushInterval || 5000,
        resources: o.resources !== false
      };
      cfg.vid = store(VKEY) || hex(16);
      store(VKEY, cfg.vid);
      lastRoute = loc.pathname + loc.search;
      instrumentRequests();
      instrumentHistory();
      instrumentVitals();
      w.addEventListener("click", guard(onClick), true);
      w.addEventListener("error", guard(function (e) {
        if (e.target && e.target !== w) return; // a resource, not a script
        jsError(e.error, e.message, e.filename ? "at " + e.filename + ":" + e.lineno + ":" + e.colno : "");
      }), true);
      w.addEventListener("unhandledrejection", guard(function (e) {
        var r = e.reason;
        jsError(r instanceof Error ? r : null, "Unhandled rejection: " + (r && r.message || r));
      }));
      d.addEventListener("visibilitychange", guard(function () { if (d.visibilityState === "hidden") leaving(1); }));
      w.addEventListener("pagehide", guard(function () { leaving(1); }));
      if (d.readyState === "complete") setTimeout(guard(pageLoad), 0);
      else w.addEventListener("load", function () { setTimeout(guard(pageLoad), 0); });
    }),
    identifyUser: guard(function (tag) {
      if (!cfg || !tag || dnt()) return;
      var s = session();
      s.u = str(tag, 256);
      store(KEY, s);
      push({type: "identify", user: s.u});
    }),
    endSession: guard(function (reason) {
      if (!cfg) return;
      leaving();
      push({type: "end", reason: str(reason || "endSession", 256), start: now()});
      send(false);
      store(KEY, null);
      sid = null;
      ended = true;
    }),
    reportCustomAction: guard(function (name, duration) {
      var dur = round(Math.max(0, +duration));
      push({type: "custom", name: String(name), start: now() - dur, dur: dur});
    }),
    reportError: guard(function (error) { jsError(error, error, "", "custom"); }),
    setProperty: guard(function (key, value) {
      push({type: "property", key: String(key), value: String(value)});
    }),
    flush: guard(function () { send(false); })
  };
  w.rumline = api;
  if (script && script.dataset.app) api.init(script.dataset); // <script data-app data-endpoint>
})(window);
