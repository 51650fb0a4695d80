/**
 * Where the embedded PostgreSQL's binaries and data directory live, and as whom the server runs.
 *
 * PostgreSQL refuses to run as root, so under root it runs as the `postgres` user, which must be able to
 * reach its binaries and its data directory: every parent directory searchable by it. A checkout in a
 * private directory (/root, a `mktemp -d` directory) is not. Only in that case are the binaries copied, once
 * per version, and the cluster kept under EMBEDDED_HOME, the data directory's `pg` becoming a symlink to it.
 * Everything else (a normal user, root in a directory others can traverse) runs in place as before.
 * README.md ("Embedded PostgreSQL") says the same for users.
 */
import { execFileSync, spawnSync } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";

/**
 * Root's home for what the `postgres` user must reach. Under /var/lib because only root can create entries
 * there (in /tmp or /var/tmp another user could plant binaries first) and nothing cleans it behind our back
 * (`npm start`'s cluster is data); not /var/lib/ingestd, which is the systemd unit's state directory.
 */
export const EMBEDDED_HOME = "/var/lib/ingestd-embedded-postgres";

const SERVER_USER = "postgres";
const OR_DATABASE_URL = "or set DATABASE_URL to a PostgreSQL server of your own";

/** A refusal to start: the cause and the fix, in one line. */
export class EmbeddedDbError extends Error {
  constructor(cause: string, fix: string) {
    super(`embedded PostgreSQL cannot start: ${cause}. ${fix}`.replace(/\s*\n\s*/g, " "));
    this.name = "EmbeddedDbError";
    // Wherever it is printed (the test runner, a caller's `err.stack`), the line is all there is to say.
    this.stack = `${this.name}: ${this.message}`;
  }
}

/** The ways out, in a sentence that always offers DATABASE_URL last. */
export function fix(...ways: string[]): string {
  const text = [...ways, OR_DATABASE_URL].join(", ").replace(/^or /, "");
  return `${text[0].toUpperCase()}${text.slice(1)}.`;
}

/** The usual fix when a path cannot be used. */
export function fixDataDir(): string {
  return fix("set DATA_DIR to a directory you can write");
}

export interface ServerUser {
  uid: number;
  gid: number;
}

/** The user the server runs as: null when that is this process's own (not root). */
export function serverUser(): ServerUser | null {
  if (process.getuid?.() !== 0) return null;
  return findUser() ?? createUser();
}

function findUser(): ServerUser | null {
  try {
    const id = (flag: string) =>
      Number(execFileSync("id", [flag, SERVER_USER], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim());
    return { uid: id("-u"), gid: id("-g") };
  } catch {
    return null;
  }
}

/** A system account without a home or shell: it only runs the server. */
function createUser(): ServerUser {
  const run = (cmd: string, args: string[]) => execFileSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  try {
    try {
      run("groupadd", ["--system", SERVER_USER]);
    } catch (err) {
      if ((err as { status?: number }).status !== 9) throw err; // 9: the group exists already
    }
    run("useradd", [
      "--system",
      "--gid",
      SERVER_USER,
      "--no-create-home",
      "--home-dir",
      "/nonexistent",
      "--shell",
      "/usr/sbin/nologin",
      SERVER_USER,
    ]);
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new EmbeddedDbError(
      `PostgreSQL refuses to run as root and there is no "${SERVER_USER}" user to run it as; creating one failed (${(e.stderr || e.message).trim()})`,
      fix(`create it (useradd --system ${SERVER_USER})`, "run as a non-root user"),
    );
  }
  const user = findUser();
  if (user === null)
    throw new EmbeddedDbError(`the "${SERVER_USER}" user was created but cannot be looked up`, fix("run as a non-root user"));
  return user;
}

/** Whether `user` may do `bit` (1 search/execute, 2 write, 4 read) by the mode bits (ACLs not consulted). */
function permits(st: fs.Stats, user: ServerUser, bit: number): boolean {
  if (st.uid === user.uid) return ((st.mode >> 6) & bit) === bit;
  if (st.gid === user.gid) return ((st.mode >> 3) & bit) === bit; // spawn drops supplementary groups
  return (st.mode & bit) === bit;
}

/** Whether `user` can search every directory from / down to `dir` (so reach what is inside it). */
export function searchableBy(user: ServerUser, dir: string): boolean {
  let current = fs.realpathSync(dir);
  for (;;) {
    if (!permits(fs.statSync(current), user, 1)) return false;
    const parent = path.dirname(current);
    if (parent === current) return true;
    current = parent;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Binaries

export interface Binaries {
  /** The package's `native` directory: bin/, lib/, share/. */
  dir: string;
  initdb: string;
  postgres: string;
  /** A copy in EMBEDDED_HOME rather than the installed package. */
  copied: boolean;
}

function platformPackage(): string {
  const platform = os.platform() === "win32" ? "windows" : os.platform();
  return `@embedded-postgres/${platform}-${os.arch()}`;
}

/** The installed platform package (a dependency of `embedded-postgres`, which names it). */
function installedPackage(): { dir: string; version: string } {
  const name = platformPackage();
  try {
    const entry = createRequire(require.resolve("embedded-postgres")).resolve(name);
    const dir = path.resolve(path.dirname(entry), "..");
    const version = (JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8")) as { version: string }).version;
    return { dir, version };
  } catch (err) {
    throw new EmbeddedDbError(
      `its binaries (${name}) are not installed (${(err as Error).message.split("\n")[0]})`,
      fix("run npm install"),
    );
  }
}

function binariesIn(dir: string, copied: boolean): Binaries {
  return { dir, initdb: path.join(dir, "bin", "initdb"), postgres: path.join(dir, "bin", "postgres"), copied };
}

/** Whether `user` can run the binaries in `dir` and read their share files: tried, not guessed. */
function usableBy(user: ServerUser, dir: string): boolean {
  const b = binariesIn(dir, false);
  for (const file of [b.postgres, b.initdb]) {
    const r = spawnSync(file, ["--version"], { uid: user.uid, gid: user.gid, cwd: "/", stdio: "ignore", timeout: 10_000 });
    if (r.error || r.status !== 0) return false;
  }
  const bki = path.join(dir, "share", "postgresql", "postgres.bki");
  try {
    return searchableBy(user, path.dirname(bki)) && permits(fs.statSync(bki), user, 4);
  } catch {
    return false;
  }
}

/** The binaries the server can run: the installed ones, or (root, out of the user's reach) a shared copy. */
export function locateBinaries(user: ServerUser | null): Binaries {
  const pkg = installedPackage();
  const installed = path.join(pkg.dir, "native");
  if (user === null || usableBy(user, installed)) return binariesIn(installed, false);
  return binariesIn(sharedCopy(installed, `postgres-${pkg.version}-${os.platform()}-${os.arch()}`, user), true);
}

/**
 * A copy of `native` under EMBEDDED_HOME, made once per version and reused. It is staged in a temporary
 * directory and renamed into place, so concurrent starts (parallel tests, the bench) never see half a copy:
 * the first rename wins, the others drop theirs.
 */
function sharedCopy(native: string, name: string, user: ServerUser): string {
  const home = rootDir(EMBEDDED_HOME);
  const target = path.join(home, name);
  if (fs.existsSync(target)) {
    if (usableBy(user, target)) return target;
    fs.rmSync(target, { recursive: true, force: true }); // damaged (files removed by hand): copy again
  }
  removeStaleStaging(home);
  const staging = fs.mkdtempSync(path.join(home, ".copy-"));
  try {
    const copy = path.join(staging, "native");
    fs.cpSync(native, copy, { recursive: true, verbatimSymlinks: true });
    openForAll(copy);
    try {
      fs.renameSync(copy, target);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== "ENOTEMPTY" && code !== "EEXIST") throw err;
    }
  } finally {
    fs.rmSync(staging, { recursive: true, force: true });
  }
  if (!usableBy(user, target)) {
    throw new EmbeddedDbError(
      `the "${SERVER_USER}" user cannot run the PostgreSQL binaries copied to ${target}`,
      fix(`check that ${EMBEDDED_HOME} is not on a noexec mount`, "run as a non-root user"),
    );
  }
  return target;
}

/** Staging directories of a copy that died midway (older than an hour: no live copy takes that long). */
function removeStaleStaging(home: string): void {
  for (const entry of fs.readdirSync(home)) {
    if (!entry.startsWith(".copy-")) continue;
    const full = path.join(home, entry);
    try {
      if (Date.now() - fs.statSync(full).mtimeMs > 3_600_000) fs.rmSync(full, { recursive: true, force: true });
    } catch {
      // removed by another process meanwhile
    }
  }
}

/** Directories 0755, files 0644 or 0755: the checkout may have been installed under a umask of 077. */
function openForAll(dir: string): void {
  fs.chmodSync(dir, 0o755);
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) openForAll(full);
    else if (entry.isFile()) fs.chmodSync(full, fs.statSync(full).mode & 0o100 ? 0o755 : 0o644);
  }
}

/** A directory only root can write and anyone can traverse, refusing one someone else made. */
function rootDir(dir: string): string {
  fs.mkdirSync(dir, { recursive: true });
  const st = fs.lstatSync(dir);
  if (!st.isDirectory() || st.uid !== 0) {
    throw new EmbeddedDbError(`${dir} is not a directory owned by root`, fix("remove it and start again"));
  }
  fs.chmodSync(dir, 0o755); // explicit: root's umask may be 077
  return dir;
}

// ---------------------------------------------------------------------------------------------------------
// Data directory

export interface ClusterPlace {
  /** The data directory PostgreSQL is given (never through a symlink it might not be able to follow). */
  dataDir: string;
  /** Its parent: writable by us, reachable by the server's user (initdb's password file goes there). */
  workDir: string;
  /** The cluster lives in a directory of its own under EMBEDDED_HOME, `<dir>/pg` links to it. */
  relocated: boolean;
}

/**
 * Where the cluster of `dir` lives: `<dir>/pg`, or (root, `dir` out of the server user's reach) a directory
 * of its own under EMBEDDED_HOME that `<dir>/pg` links to, so that a later run, `ingestd partitions` and
 * runningEmbeddedDbUrl find it the usual way. The credentials stay in `dir`, readable by root only.
 */
export function clusterPlace(dir: string, user: ServerUser | null): ClusterPlace {
  const link = path.join(dir, "pg");
  const st = lstatOrNull(link);
  if (st?.isSymbolicLink()) {
    const dataDir = path.resolve(dir, fs.readlinkSync(link));
    const ours = path.dirname(path.dirname(dataDir)) === clustersDir();
    // Ours, its directory may have been cleaned away meanwhile; one made by hand is left as it is.
    if (ours && user !== null) prepareContainer(path.dirname(dataDir), dir);
    return { dataDir, workDir: path.dirname(dataDir), relocated: ours };
  }
  if (user === null) return { dataDir: link, workDir: dir, relocated: false };
  if (searchableBy(user, path.dirname(fs.realpathSync(dir)))) {
    fs.chmodSync(dir, 0o755); // dir itself may be a mkdtemp (0700) directory
    return { dataDir: link, workDir: dir, relocated: false };
  }
  if (st !== null && fs.existsSync(path.join(link, "PG_VERSION"))) {
    throw new EmbeddedDbError(
      `the cluster in ${link} is out of reach of the "${SERVER_USER}" user PostgreSQL runs as (a parent directory is private)`,
      fix(`move ${dir} to a directory others can traverse`, `remove ${link} to start a new cluster`),
    );
  }
  fs.rmSync(link, { recursive: true, force: true });
  const container = prepareContainer(path.join(clustersDir(), clusterKey(dir)), dir);
  const dataDir = path.join(container, "pg");
  fs.symlinkSync(dataDir, link);
  return { dataDir, workDir: container, relocated: true };
}

function clustersDir(): string {
  return path.join(EMBEDDED_HOME, "clusters");
}

/** `<name>-<hash of the real path>`: stable for a directory, readable for whoever cleans up. */
function clusterKey(dir: string): string {
  const real = fs.realpathSync(dir);
  const name = real
    .split(path.sep)
    .filter(Boolean)
    .slice(-2)
    .join("-")
    .replace(/[^A-Za-z0-9._-]/g, "_")
    .slice(-40);
  return `${name}-${crypto.createHash("sha256").update(real).digest("hex").slice(0, 12)}`;
}

function prepareContainer(container: string, origin: string): string {
  rootDir(EMBEDDED_HOME);
  rootDir(clustersDir());
  rootDir(container);
  // Whose cluster this is, for someone deciding what to delete.
  fs.writeFileSync(path.join(container, "origin"), `${fs.realpathSync(origin)}\n`);
  return container;
}

function lstatOrNull(file: string): fs.Stats | null {
  try {
    return fs.lstatSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw err;
  }
}
