/**
 * What every HTTP route does before its own work, in one place: the request context (request id, allowed
 * origin, traceparent; request-context.ts) and the CORS preflight of each route. Routes register on the app
 * this returns and stay unaware of both (docs/http-api.md#cors, docs/http-api.md#request-ids).
 */
import { randomUUID } from "node:crypto";
import type { Logger } from "../ops/logger";
import type { CorsPolicy } from "../security/cors";
import { answer, markClosed } from "./http-responses";
import { attachContext, RequestContext } from "./request-context";
import type { HttpRequest, HttpResponse, TemplatedApp } from "./uws";

/** The longest X-Request-ID taken as is. */
const MAX_REQUEST_ID = 200;
/** Printable ASCII only: the id goes back into a response header and into log lines. */
const PRINTABLE = /^[\x20-\x7e]+$/;

type Handler = (res: HttpResponse, req: HttpRequest) => void | Promise<void>;
/** The app's route methods and the HTTP method each stands for in a preflight's allowed methods. */
const ROUTE_METHODS: Record<string, string | null> = {
  get: "GET",
  post: "POST",
  put: "PUT",
  patch: "PATCH",
  del: "DELETE",
  head: "HEAD",
  any: null,
};

export class HttpPolicy {
  constructor(
    private readonly cors: CorsPolicy,
    private readonly log: Logger,
  ) {}

  /** Keeps what the answer needs of `req` on `res`. Call first in a handler: `req` dies when it returns. */
  begin(res: HttpResponse, req: HttpRequest): void {
    const presented = req.getHeader("x-request-id");
    const requestId = presented.length <= MAX_REQUEST_ID && PRINTABLE.test(presented) ? presented : randomUUID();
    const origin = req.getHeader("origin");
    const allowed = origin !== "" && this.cors.enabled && this.cors.allows(origin) ? origin : "";
    attachContext(
      res,
      new RequestContext(
        requestId,
        allowed,
        req.getHeader("traceparent"),
        req.getMethod().toUpperCase(),
        req.getUrl(),
        this.cors,
        this.log,
      ),
    );
  }

  /** Whether a WebSocket upgrade from this Origin header may proceed. */
  allowsUpgrade(origin: string): boolean {
    return this.cors.allowsUpgrade(origin);
  }

  /**
   * `app` whose route methods begin each request's context before the handler runs, and answer `OPTIONS`
   * on every route registered with a method (the CORS preflight). Everything else is the app itself.
   */
  routes(app: TemplatedApp): TemplatedApp {
    const methods = new Map<string, string[]>();
    return new Proxy(app, {
      get: (target, property, receiver) => {
        const name = String(property);
        if (!(name in ROUTE_METHODS)) {
          const value = Reflect.get(target, property, receiver);
          return typeof value === "function" ? value.bind(target) : value;
        }
        return (pattern: string, handler: Handler) => {
          const method = ROUTE_METHODS[name];
          if (method !== null) {
            let list = methods.get(pattern);
            if (list === undefined) {
              list = [];
              methods.set(pattern, list);
              target.options(pattern, this.preflight(list));
            }
            list.push(method);
          }
          (target as any)[name](pattern, (res: HttpResponse, req: HttpRequest) => {
            this.begin(res, req);
            return handler(res, req);
          });
          return receiver;
        };
      },
    });
  }

  /**
   * 204 for an `OPTIONS` request: `Allow` always; for an allowed origin also the CORS preflight headers
   * (a disallowed origin gets none, and its browser refuses the request it was about to send).
   */
  private preflight(methods: string[]): Handler {
    return (res, req) => {
      res.onAborted(() => markClosed(res));
      this.begin(res, req);
      const list = methods.join(", ");
      const headers: Record<string, string> = { Allow: `${list}, OPTIONS` };
      const origin = req.getHeader("origin");
      if (origin !== "" && this.cors.enabled && this.cors.allows(origin)) {
        for (const [name, value] of this.cors.preflightHeaders(list)) headers[name] = value;
      }
      answer(res, 204, "", { headers });
    };
  }
}

/**
 * A path parameter, percent-decoded. A malformed escape (`%E0%A4%A`) is kept as sent: decodeURIComponent
 * would throw inside the uWS handler, and the caller answers 404 naming what it got.
 */
export function pathParameter(raw: string): string {
  try {
    return decodeURIComponent(raw);
  } catch {
    return raw;
  }
}
