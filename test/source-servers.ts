/**
 * Real servers for the pull-source tests, on 127.0.0.1: a REST API of users (node:http) with each
 * pagination style, an incremental filter, scripted failures (429 with Retry-After, 500, slow, malformed
 * JSON) and a request log; and helpers to write a daemon configuration with `sources`.
 */
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { ROOT } from "./harness";

export interface DemoUser {
  id: number;
  name: string;
  username: string;
  email: string;
  address: Record<string, unknown>;
  phone: string;
  website: string;
  company: Record<string, unknown>;
  updated_at: string;
}

export function demoUser(id: number, updatedAt: string, extra: Partial<DemoUser> = {}): DemoUser {
  return {
    id,
    name: `Leanne ${id}`,
    username: `Bret${id}`,
    email: `user${id}@april.biz`,
    address: {
      street: "Kulas Light",
      suite: "Apt. 556",
      city: "Gwenborough",
      zipcode: "92998-3874",
      geo: { lat: "-37.3159", lng: "81.1496" },
    },
    phone: "1-770-736-8031 x56442",
    website: "hildegard.org",
    company: { name: "Romaguera-Crona", catchPhrase: "Multi-layered client-server neural-net", bs: "harness real-time e-markets" },
    updated_at: updatedAt,
    ...extra,
  };
}

export interface LoggedRequest {
  path: string;
  query: URLSearchParams;
  headers: http.IncomingHttpHeaders;
  at: number;
  /** Records the answer carried. */
  served: number;
}

export type Behaviour = (res: http.ServerResponse) => boolean | Promise<boolean>;

export interface RestApi {
  base: string;
  /** By id: what the API serves, in id order. */
  users: Map<number, DemoUser>;
  log: LoggedRequest[];
  /** Per path: answers to give before the normal one, one per request (true: handled). */
  script: Map<string, Behaviour[]>;
  close(): Promise<void>;
}

export const answers = {
  status(status: number, headers: Record<string, string> = {}): Behaviour {
    return (res) => {
      res.writeHead(status, { "content-type": "application/json", ...headers });
      res.end(JSON.stringify({ error: `status ${status}` }));
      return true;
    };
  },
  malformed(): Behaviour {
    return (res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end('{"users": [ {"id": 1,');
      return true;
    };
  },
  slow(ms: number): Behaviour {
    return (res) =>
      new Promise((resolve) => {
        const timer = setTimeout(() => {
          if (!res.destroyed) answers.status(200)(res);
          resolve(true);
        }, ms);
        res.on("close", () => clearTimeout(timer));
      });
  },
};

/**
 * The users API. `/page?page=&per_page=` (a bare array), `/cursor?cursor=` (`{"users":[…],"next"}`, two a
 * page), `/link?page=` (a bare array, two a page, `Link: <…>; rel="next"`), each filtered by
 * `updated_since` (strictly after); `/page` wants `Authorization: Bearer <token>`. Any path serves the
 * scripted behaviours first. `idsFor(path)` picks which users a path serves.
 */
export async function startRestApi(token: string, idsFor: (path: string) => (id: number) => boolean = () => () => true): Promise<RestApi> {
  const users = new Map<number, DemoUser>();
  const log: LoggedRequest[] = [];
  const script = new Map<string, Behaviour[]>();
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url ?? "/", "http://127.0.0.1");
    const entry: LoggedRequest = { path: url.pathname, query: url.searchParams, headers: req.headers, at: Date.now(), served: 0 };
    log.push(entry);
    const queued = script.get(url.pathname);
    if (queued && queued.length > 0 && (await queued.shift()!(res))) return;
    if (url.pathname === "/page" && req.headers.authorization !== `Bearer ${token}`) return answers.status(401)(res);
    const since = url.searchParams.get("updated_since");
    const keep = idsFor(url.pathname);
    const all = [...users.values()].filter((u) => keep(u.id) && (since === null || u.updated_at > since)).sort((a, b) => a.id - b.id);
    const json = (body: unknown, headers: Record<string, string> = {}) => {
      res.writeHead(200, { "content-type": "application/json", ...headers });
      res.end(JSON.stringify(body));
    };
    if (url.pathname === "/page" || url.pathname === "/flaky" || url.pathname === "/slow" || url.pathname === "/malformed") {
      const size = Number(url.searchParams.get("per_page") ?? 100);
      const page = Number(url.searchParams.get("page") ?? 1);
      const slice = all.slice((page - 1) * size, page * size);
      entry.served = slice.length;
      return json(slice);
    }
    if (url.pathname === "/cursor") {
      const from = Number(url.searchParams.get("cursor") ?? 0);
      const slice = all.slice(from, from + 2);
      entry.served = slice.length;
      return json({ users: slice, next: from + 2 < all.length ? String(from + 2) : null });
    }
    if (url.pathname === "/link") {
      const page = Number(url.searchParams.get("page") ?? 1);
      const slice = all.slice((page - 1) * 2, page * 2);
      entry.served = slice.length;
      const headers: Record<string, string> =
        page * 2 < all.length ? { link: `</link?page=${page + 1}>; rel="next", </link?page=1>; rel="first"` } : {};
      return json(slice, headers);
    }
    answers.status(404)(res);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  return {
    base: `http://127.0.0.1:${port}`,
    users,
    log,
    script,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** The shipped configuration with these sources, written to `dir`; its path (for INGESTD_CONFIG). */
export function configWithSources(dir: string, sources: Record<string, unknown>): string {
  const config = JSON.parse(fs.readFileSync(path.join(ROOT, "config/ingestd.json"), "utf8"));
  config.sources = sources;
  const file = path.join(dir, `ingestd-${Object.keys(sources).join("-").slice(0, 40)}.json`);
  fs.writeFileSync(file, JSON.stringify(config, null, 2));
  return file;
}

/** The users stream's fields, from the demo API's records (its `updated_at` is the watermark, not a column). */
export const USER_FIELDS = {
  id: "id",
  name: "name",
  username: "username",
  email: "email",
  address: "address",
  phone: "phone",
  website: "website",
  company: "company",
};
