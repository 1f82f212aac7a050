// The OpenTelemetry web tracing a site would bundle: fetch + XHR instrumentation, batched
// OTLP/HTTP JSON export, and a span processor that stamps every span with the page's session
// id, page and user (`session.id`, `page.url`, `user.email`): how rumline links spans to
// sessions.
// Built by tests/browser/test_agent_otel.py with esbuild into an IIFE exposing `otelWeb`.
import { trace } from "@opentelemetry/api";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { registerInstrumentations } from "@opentelemetry/instrumentation";
import { FetchInstrumentation } from "@opentelemetry/instrumentation-fetch";
import { XMLHttpRequestInstrumentation } from "@opentelemetry/instrumentation-xml-http-request";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { BatchSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { WebTracerProvider } from "@opentelemetry/sdk-trace-web";

const SESSION_KEY = "otel.session.id";

function sessionId() {
  let id = sessionStorage.getItem(SESSION_KEY);
  if (!id) {
    id = crypto.getRandomValues(new Uint32Array(4)).join("-");
    sessionStorage.setItem(SESSION_KEY, id);
  }
  return id;
}

class SessionSpanProcessor {
  onStart(span) {
    span.setAttribute("session.id", sessionId());
    span.setAttribute("page.url", location.href);
    const user = sessionStorage.getItem("otel.user");
    if (user) span.setAttribute("user.email", user);
  }
  onEnd() {}
  forceFlush() { return Promise.resolve(); }
  shutdown() { return Promise.resolve(); }
}

export function start({ serviceName, collector }) {
  const exporter = new OTLPTraceExporter({ url: collector + "/v1/traces" });
  const batch = new BatchSpanProcessor(exporter, { scheduledDelayMillis: 500 });
  const provider = new WebTracerProvider({
    resource: resourceFromAttributes({ "service.name": serviceName }),
    spanProcessors: [new SessionSpanProcessor(), batch],
  });
  provider.register();
  registerInstrumentations({
    instrumentations: [
      new FetchInstrumentation({ ignoreUrls: [new RegExp("^" + collector)] }),
      new XMLHttpRequestInstrumentation({ ignoreUrls: [new RegExp("^" + collector)] }),
    ],
  });
  const tracer = trace.getTracer("shop");
  addEventListener("error", (e) => {
    // No OTel instrumentation reports page errors; a site records them on a span itself.
    const span = tracer.startSpan("page error");
    span.recordException(e.error || String(e.message));
    span.end();
  });
  addEventListener("pagehide", () => provider.forceFlush());
  return {
    identify(email) { sessionStorage.setItem("otel.user", email); },
    flush() { return provider.forceFlush(); },
    sessionId,
  };
}
