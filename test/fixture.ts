/**
 * The one fixture every suite uses: what a test file starts (embedded PostgreSQL, daemons) and the after()
 * that stops it all, failed tests included. Call one of these once, at the top of the file:
 *
 *   const fx = useDaemon({ env: { WORKERS: "1" } });   // a database and a daemon on it, for the whole file
 *   const fx = useTestDb();                              // a database; the tests start their daemons
 *   const fx = useFixture();                             // nothing up front; the tests start what they need
 *
 * `fx.db` and `fx.daemon` are getters: read them in hooks and tests, once before() has run.
 * Whatever is started through `fx.startDaemon`, `fx.startDb` or `fx.restart` is stopped in after() too,
 * so a test that fails half-way leaves nothing running. harness.ts's startTestDb and startDaemon do the
 * starting; this file only adds the order and the bookkeeping.
 *
 * Node 20 calls a top-level before() hook as soon as it is registered, so a file's top-level hooks run
 * concurrently, not one after the other. The fixture therefore has a single before() that runs its steps
 * in order: the database, the daemon, then the steps the file adds with `fx.setup(fn)` (whatever needs
 * fx.db or fx.daemon: a second daemon, a connection, a first request).
 */
import { after, before } from "node:test";
import { startDaemon, startTestDb, type Daemon, type DaemonOptions, type TestDb } from "./harness";

export type Env = Record<string, string>;

export interface FixtureOptions {
  /**
   * How after() ends the daemons still running: "SIGTERM" (the default: a normal stop, and SIGKILL if the
   * daemon has not exited 30 s later) or "SIGKILL" at once (fault and crash suites: a clean stop after
   * their tests tells nothing).
   */
  stopSignal?: "SIGTERM" | "SIGKILL";
}

export interface StartDaemonOptions extends Omit<DaemonOptions, "databaseUrl"> {
  /** Default: the file's database (fx.db). */
  databaseUrl?: string;
}

export interface Fixture {
  /** Starts a daemon (on fx.db unless `databaseUrl` is given); after() stops it if it still runs. */
  startDaemon(options?: StartDaemonOptions): Promise<Daemon>;
  /** Starts another embedded PostgreSQL (a cluster of its own, with one fresh database); closed in after(). */
  startDb(): Promise<TestDb>;
  /**
   * Adds a step to the fixture's before(): it runs after the database, the daemon and the steps added
   * earlier. Call it at the top level of the file.
   */
  setup(fn: () => unknown): void;
  /**
   * Adds a step to the fixture's after(): the steps run in the order added, before the daemons are stopped
   * and the databases closed (for the tests' own connections, sockets, timers). A failing step is ignored.
   */
  teardown(fn: () => unknown): void;
}

export interface TestDbFixture extends Fixture {
  /** The file's database, started in before(). */
  readonly db: TestDb;
}

export interface DaemonFixture extends TestDbFixture {
  /** The file's daemon on fx.db, started in before() after the database; restart() replaces it. */
  readonly daemon: Daemon;
  /**
   * Stops fx.daemon if it still runs (SIGTERM, waiting for the exit), then starts a new one on fx.db, which
   * becomes fx.daemon: with `env` if given, else with the env the file's daemon had.
   */
  restart(env?: Env): Promise<Daemon>;
}

export interface DaemonFixtureOptions extends FixtureOptions {
  /**
   * The daemon's environment. A function is called in before(), after the database has started and just
   * before the daemon starts: it may write the files the environment points to (keys, certificates).
   */
  env?: Env | (() => Env | Promise<Env>);
  args?: string[];
  startTimeoutMs?: number;
}

const STOP_GRACE_MS = 30_000;

function running(d: Daemon): boolean {
  return d.child.exitCode === null && d.child.signalCode === null;
}

async function end(d: Daemon, signal: "SIGTERM" | "SIGKILL"): Promise<void> {
  if (!running(d)) return;
  if (signal === "SIGKILL") {
    await d.kill("SIGKILL");
    return;
  }
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<"late">((resolve) => (timer = setTimeout(() => resolve("late"), STOP_GRACE_MS)));
  const outcome = await Promise.race([d.stop(), late]);
  clearTimeout(timer);
  if (outcome === "late") await d.kill("SIGKILL");
}

/** What a fixture starts, its one before() and its one after(). */
class Tracked implements Fixture {
  private readonly setups: Array<() => unknown> = [];
  private readonly teardowns: Array<() => unknown> = [];
  private readonly daemons: Daemon[] = [];
  private readonly dbs: TestDb[] = [];
  protected fileDb: TestDb | undefined;

  constructor(options: FixtureOptions) {
    const signal = options.stopSignal ?? "SIGTERM";
    before(async () => {
      // Node 20 calls this while the file is still loading: wait until it has loaded, and with it every
      // step the file adds at its top level.
      await new Promise((resolve) => setImmediate(resolve));
      for (const fn of this.setups) await fn();
    });
    after(async () => {
      for (const fn of this.teardowns) {
        try {
          await fn();
        } catch {
          // the rest of the teardown still runs
        }
      }
      await Promise.all(this.daemons.map((d) => end(d, signal).catch(() => undefined)));
      // Newest first: the file's database, started first, closes last.
      for (const db of [...this.dbs].reverse()) await db.close().catch(() => undefined);
    });
  }

  // Arrow functions, so that `const { startDaemon } = fx` works too.
  startDaemon = async (options: StartDaemonOptions = {}): Promise<Daemon> => {
    const databaseUrl = options.databaseUrl ?? this.fileDb?.url;
    if (databaseUrl === undefined) throw new Error("fx.startDaemon: no database (pass databaseUrl, or use useTestDb / useDaemon)");
    const d = await startDaemon({ ...options, databaseUrl });
    this.daemons.push(d);
    return d;
  };

  startDb = async (): Promise<TestDb> => {
    const db = await startTestDb();
    this.dbs.push(db);
    return db;
  };

  setup = (fn: () => unknown): void => {
    this.setups.push(fn);
  };

  teardown = (fn: () => unknown): void => {
    this.teardowns.push(fn);
  };
}

class WithDb extends Tracked implements TestDbFixture {
  constructor(options: FixtureOptions) {
    super(options);
    this.setup(async () => {
      this.fileDb = await this.startDb();
    });
  }

  get db(): TestDb {
    if (!this.fileDb) throw new Error("fx.db is not started yet: read it in a hook or a test, not when the file loads");
    return this.fileDb;
  }
}

class WithDaemon extends WithDb implements DaemonFixture {
  private current: Daemon | undefined;
  private env: Env = {};

  constructor(private readonly options: DaemonFixtureOptions) {
    super(options);
    this.setup(async () => {
      this.env = typeof options.env === "function" ? await options.env() : (options.env ?? {});
      this.current = await this.startFileDaemon(this.env);
    });
  }

  get daemon(): Daemon {
    if (!this.current) throw new Error("fx.daemon is not started yet: read it in a hook or a test, not when the file loads");
    return this.current;
  }

  restart = async (env?: Env): Promise<Daemon> => {
    if (this.current && running(this.current)) await this.current.stop();
    this.current = await this.startFileDaemon(env ?? this.env);
    return this.current;
  };

  private startFileDaemon(env: Env): Promise<Daemon> {
    return this.startDaemon({ env, args: this.options.args, startTimeoutMs: this.options.startTimeoutMs });
  }
}

/** Nothing started up front: registers the before() and after() only; the tests start what they need through fx. */
export function useFixture(options: FixtureOptions = {}): Fixture {
  return new Tracked(options);
}

/** One database for the file (fx.db), started in before(); the tests start their daemons with fx.startDaemon. */
export function useTestDb(options: FixtureOptions = {}): TestDbFixture {
  return new WithDb(options);
}

/** One database for the file (fx.db) and one daemon on it (fx.daemon), both started in before(). */
export function useDaemon(options: DaemonFixtureOptions = {}): DaemonFixture {
  return new WithDaemon(options);
}
