import pg from "pg";
import { now } from "../../src/shared/clock";
import { CopyRows, type RowSource } from "../records/copy-rows";
import { BatchRows } from "./batch-rows";
import type { CommitTarget, UpsertSql } from "./commit-targets";
import { copyIn } from "./copy-in";
import { type CopyWriter, DatabaseUnavailable, isRowError, type RowFailure } from "./copy-writer";
import {
  COMMIT_GAUGE_COMMITTING,
  COMMIT_GAUGE_LONG,
  COMMIT_GAUGE_ONE_TRIP,
  COMMIT_GAUGE_SLOTS,
  COMMIT_GAUGE_WAITING,
} from "../../src/shared/task-protocol";
import { type CheckedKeys, claimIds, oneTripClaim, probeFilterHits } from "./id-claim";
import { advanceSessions, checkSessions, type ProducerSql, type SessionMark, type SessionSkip } from "./producer-seqs";

/**
 * Group commit: the rows of many tasks share one transaction. A batch is sealed when it reaches
 * `batchSize` rows, `maxBatchBytes`, or `batchTimeoutMs` of age; sealed batches run one at a time on the
 * worker's single connection, higher priority first. A task's rows always sit in one batch, so its outcome
 * is settled by exactly one commit, and its batch-status row and dead letters commit with its rows.
 *
 * Priority (docs/architecture.md#priority) is the owner of the worker's order: whenever the connection frees up, the
 * next transaction is the highest-priority batch waiting, open ones included (an open batch of higher
 * priority than every sealed one is sealed then, full or not). Only the transaction already running is
 * never overtaken.
 *
 * Inside a transaction tables are written in stream order, so rows that reference another stream's rows
 * (lineitem → orders) see the rows committed with them.
 *
 * Frames of producer sessions carry a session mark: their transaction locks the sessions' rows first and
 * leaves out the frames it must not store (producer-seqs.ts), so one fenced producer never holds back the
 * other producers' rows in the same batch.
 */

export interface GroupCommitOptions {
  batchSize: number;
  maxBatchBytes: number;
  batchTimeoutMs: number;
  batchesCopySql: string;
  deadLettersCopySql: string;
  /** `$1` dead-letter ids: marks them replayed (commit-targets.ts). */
  markReplayedSql: string;
  /** Shared counters (COMMIT_GAUGE_* slots, summed over workers) the front exports as metrics. */
  gauges?: Int32Array;
  producers: ProducerSql;
}

export interface PartWork {
  target: CommitTarget;
  /** COPY text rows, each ending in a newline. */
  rows: CopyRows;
  /** Deduplicating targets: each row's id-state key (src/shared/dedup-key.ts). */
  keys?: string[];
}

interface BatchPart {
  rows: BatchRows;
  keys: string[];
}

/** What happened to one part's rows, by row position within the task's part. */
export interface PartOutcome {
  failures: RowFailure[];
  /** 1 where the row was not stored because its id was already stored; null for plain streams. */
  duplicates: Uint8Array | null;
}

export interface TaskWork {
  priority: number;
  parts: PartWork[];
  bytes: number;
  /**
   * Runs inside the transaction once the rows are written, before COMMIT (and again if the batch is
   * retried): returns the task's ingest_batches row and dead-letter rows, as COPY text.
   */
  finalize(outcomes: PartOutcome[]): { batchRow: string | null; deadLetters: string[] };
  /** A producer session's frame: stored only if its session still holds the producer and it is the next seq. */
  session?: SessionMark | null;
  /** Dead letters the task replays: marked in the transaction that stores its rows (IngestTask.replayOf). */
  replayOf?: readonly string[];
}

export interface CommitResult {
  outcomes: PartOutcome[];
  /** A session frame not stored by this commit, and why (its outcomes then say nothing was refused). */
  skipped: SessionSkip | null;
  committedAt: number;
  copyMs: number;
}

interface Member {
  work: TaskWork;
  /** First row of each of the task's parts within the batch's part of the same target. */
  offsets: number[];
  resolve: (result: CommitResult) => void;
  reject: (err: Error) => void;
}

class Batch {
  parts = new Map<CommitTarget, BatchPart>();
  members: Member[] = [];
  rowCount = 0;
  bytes = 0;
  /** Holds frames of producer sessions. */
  sessions = false;
  timer: NodeJS.Timeout | null = null;
  /** Reached its age while a commit was running: sealed as soon as the connection is free. */
  due = false;
  constructor(readonly priority: number) {}
}

export class GroupCommitter {
  private open = new Map<number, Batch>();
  private sealed: Batch[] = [];
  private running = false;
  private readonly gauges: Int32Array;

  constructor(
    private readonly writer: CopyWriter,
    private readonly options: GroupCommitOptions,
  ) {
    this.gauges = options.gauges ?? new Int32Array(COMMIT_GAUGE_SLOTS);
  }

  /** Queues a task's rows; resolves once they are committed (rows PostgreSQL refused are in the outcomes). */
  add(work: TaskWork): Promise<CommitResult> {
    const priority = work.priority;
    let batch = this.open.get(priority);
    if (!batch) {
      const opened = new Batch(priority);
      this.open.set(priority, opened);
      opened.timer = setTimeout(() => this.onAge(opened), this.options.batchTimeoutMs);
      batch = opened;
    }
    const member = { work, offsets: [] as number[] } as Member;
    const done = new Promise<CommitResult>((resolve, reject) => {
      member.resolve = resolve;
      member.reject = reject;
    });
    for (const part of work.parts) {
      let into = batch.parts.get(part.target);
      if (!into) batch.parts.set(part.target, (into = { rows: new BatchRows(), keys: [] }));
      member.offsets.push(into.rows.add(part.rows));
      if (part.keys) for (let i = 0; i < part.keys.length; i++) into.keys.push(part.keys[i]);
      batch.rowCount += part.rows.length;
    }
    batch.bytes += work.bytes;
    if (work.session) batch.sessions = true;
    batch.members.push(member);
    Atomics.add(this.gauges, COMMIT_GAUGE_WAITING, 1);
    if (batch.rowCount >= this.options.batchSize || batch.bytes >= this.options.maxBatchBytes) this.seal(batch);
    return done;
  }

  private seal(batch: Batch): void {
    if (this.open.get(batch.priority) !== batch) return;
    this.open.delete(batch.priority);
    if (batch.timer !== null) clearTimeout(batch.timer);
    let i = this.sealed.length;
    while (i > 0 && this.sealed[i - 1].priority < batch.priority) i--;
    this.sealed.splice(i, 0, batch);
    if (!this.running) void this.run();
  }

  /**
   * Age reached. While the connection is busy, sealing would only queue a small batch behind the running
   * commit (measured: ~300-900 rows per transaction instead of batchSize under load, each paying the
   * merge's fixed cost); instead the batch keeps filling up to batchSize and is sealed when the connection
   * frees up, which is no later than it would have run anyway.
   */
  private onAge(batch: Batch): void {
    batch.timer = null;
    if (this.running) batch.due = true;
    else this.seal(batch);
  }

  private async run(): Promise<void> {
    this.running = true;
    for (;;) {
      this.sealReady();
      const next = this.sealed.shift();
      if (!next) break;
      await this.commit(next);
    }
    this.running = false;
  }

  /**
   * The connection is free: seals the open batches that would run next anyway. With nothing sealed, those
   * that reached their age while the last commit ran; otherwise those of higher priority than every sealed
   * batch, full or not, so that no waiting batch runs before work of higher priority.
   */
  private sealReady(): void {
    const top = this.sealed.length > 0 ? this.sealed[0].priority : -1;
    for (const batch of this.open.values()) {
      if (batch.priority > top && (top >= 0 || batch.due)) this.seal(batch);
    }
  }

  private async commit(batch: Batch): Promise<void> {
    const started = now();
    const members = batch.members.length;
    Atomics.sub(this.gauges, COMMIT_GAUGE_WAITING, members);
    Atomics.add(this.gauges, COMMIT_GAUGE_COMMITTING, members);
    let outcomes: MemberResult[];
    try {
      const client = await this.writer.connection();
      outcomes = await this.writer.watched(client, async () => {
        try {
          return await this.transaction(client, batch, false);
        } catch (err) {
          if (!isRowError(err)) throw err;
          // A row was refused: redo the batch with row isolation (savepoints), which stores the rest.
          await client.query("ROLLBACK");
          return this.transaction(client, batch, true);
        }
      });
    } catch (err) {
      this.writer.reset();
      const error = err instanceof DatabaseUnavailable ? err : new DatabaseUnavailable(err);
      // The batches behind this one would each wait out their own timeout on a database that just failed
      // or stopped answering: refuse them now (their producers resend; nothing of them was acknowledged).
      const refused = [batch, ...this.sealed.splice(0), ...this.open.values()];
      this.open.clear();
      Atomics.sub(this.gauges, COMMIT_GAUGE_COMMITTING, members);
      for (const b of refused) {
        if (b !== batch) Atomics.sub(this.gauges, COMMIT_GAUGE_WAITING, b.members.length);
        if (b.timer !== null) clearTimeout(b.timer);
        for (const m of b.members) m.reject(error);
      }
      return;
    }
    Atomics.sub(this.gauges, COMMIT_GAUGE_COMMITTING, members);
    const committedAt = now();
    const copyMs = committedAt - started;
    for (let i = 0; i < batch.members.length; i++) {
      const r = outcomes[i];
      batch.members[i].resolve({ outcomes: r.outcomes, skipped: r.skipped, committedAt, copyMs });
    }
  }

  /**
   * An upserting target's rows (commit-targets.ts UpsertSql): staged by COPY (row isolation applies there,
   * where PostgreSQL checks the values), then merged. Returns 1 per row inserted or changed; 0 for the rest
   * (unchanged, an earlier version of a key later in the batch, or refused: in `failures`).
   */
  private async upsert(
    client: pg.Client,
    sql: UpsertSql,
    rows: RowSource,
    isolating: boolean,
    failures: RowFailure[],
  ): Promise<Uint8Array> {
    const stored = new Uint8Array(rows.length);
    if (rows.length === 0) return stored;
    await client.query(sql.createStage);
    const texts: string[] = [];
    for (let i = 0; i < rows.length; i++) texts.push(`${i + 1}\t${rows.text(i)}`);
    const staged = CopyRows.encode(texts);
    if (isolating) await this.writer.copyIsolating(client, sql.stageCopySql, staged, 0, staged.length, failures);
    else await this.writer.copy(client, sql.stageCopySql, staged);
    const merged = await client.query<{ n: number }>(sql.merge);
    for (const r of merged.rows) stored[r.n - 1] = 1;
    await client.query(sql.clearStage);
    return stored;
  }

  /**
   * One transaction for the batch; returns each member's part outcomes. Statements whose answers decide nothing
   * here travel with the next one that does: BEGIN with the first claim's probe, the COPYs of rows, dead letters
   * and batch rows with the COMMIT, in one Query (copy-in.ts). A plain stream's batch then commits in one round
   * trip to PostgreSQL, a deduplicating stream's common batch in three, four when a filter was hit
   * (docs/performance.md#round-trips-of-a-group-commit). A row PostgreSQL refuses fails that Query: nothing
   * after it ran, and the batch is redone with row isolation.
   */
  private async transaction(client: pg.Client, all: Batch, isolating: boolean): Promise<MemberResult[]> {
    // Filter hits are probed before BEGIN, so no lock on an id-state parent is held through the transaction.
    const checks = new Map<CommitTarget, CheckedKeys>();
    for (const [target, part] of all.parts) {
      if (target.dedup !== null) checks.set(target, await probeFilterHits(client, target.dedup, target.dedup.filters.check(part.keys)));
    }
    if (!isolating) {
      const committed = await oneTrip(client, all, checks, this.options);
      if (committed !== null) {
        Atomics.add(this.gauges, COMMIT_GAUGE_ONE_TRIP, 1);
        return committed;
      }
    }
    /** Statements not sent yet, sent with the next Query: BEGIN, then COPYs (and their payloads). */
    let opening = "BEGIN";
    const copies: string[] = [];
    const payloads: Buffer[] = [];
    const send = async (tail: string): Promise<void> => {
      const text = [opening, ...copies, tail].filter((t) => t !== "").join("; ");
      if (text === "") return;
      await copyIn(client, text, payloads);
      opening = "";
      copies.length = 0;
      payloads.length = 0;
    };
    let batch = all;
    let skips: Array<SessionSkip | null> | null = null;
    let advance: Map<string, SessionMark> | null = null;
    if (all.sessions) {
      await send("");
      ({ skips, advance } = await checkSessions(
        client,
        this.options.producers,
        all.members.map((m) => m.work.session ?? null),
      ));
      if (skips.some((k) => k !== null)) batch = regroup(all, skips);
    }
    const targets = [...batch.parts.keys()].sort((a, b) => a.order - b.order);
    const results = new Map<CommitTarget, { failures: RowFailure[]; stored: Uint8Array | null }>();
    for (const target of targets) {
      const part = batch.parts.get(target)!;
      const n = part.rows.length;
      let rows: RowSource = part.rows;
      /** Batch row of each row copied, when only some are (dedup). */
      let copied: number[] | null = null;
      let stored: Uint8Array | null = null;
      if (target.dedup !== null) {
        // Claim the ids first; only rows whose id this batch recorded are copied. Sent before the claim, the
        // COPYs of the targets before this one keep stream order.
        if (copies.length > 0) await send("");
        const notStored = await claimIds(client, target.dedup, part.keys, checks.get(target)!, opening);
        opening = "";
        stored = new Uint8Array(n).fill(1);
        for (const r of notStored) stored[r - 1] = 0;
        if (notStored.length > 0) {
          copied = [];
          for (let i = 0; i < n; i++) if (stored[i] === 1) copied.push(i);
          rows = CopyRows.pick(part.rows, copied);
        }
      }
      const failures: RowFailure[] = [];
      if (target.upsert !== null) {
        await send("");
        stored = await this.upsert(client, target.upsert, rows, isolating, failures);
      } else if (rows.length > 0) {
        if (isolating) {
          await send("");
          await this.writer.copyIsolating(client, target.copySql, rows, 0, rows.length, failures);
        } else {
          copies.push(target.copySql);
          payloads.push(rows.payload(0, rows.length));
        }
      }
      if (copied !== null) for (const f of failures) f.row = copied[f.row];
      if (target.dedup !== null && failures.length > 0) {
        // Refused rows were not stored: their ids must not count as stored for later batches.
        await client.query(target.dedup.release, [failures.map((f) => part.keys[f.row])]);
        for (const f of failures) stored![f.row] = 0;
      }
      failures.sort((a, b) => a.row - b.row);
      results.set(target, { failures, stored });
    }

    const outcomes = settleMembers(
      batch.members,
      (member) =>
        member.work.parts.map((part, p) => {
          const { failures, stored } = results.get(part.target)!;
          const first = member.offsets[p];
          const end = first + part.rows.length;
          const own: RowFailure[] = [];
          for (const f of failures) if (f.row >= first && f.row < end) own.push({ ...f, row: f.row - first });
          let duplicates: Uint8Array | null = null;
          if (stored !== null) {
            duplicates = new Uint8Array(part.rows.length);
            const failed = new Set(own.map((f) => f.row));
            for (let i = 0; i < part.rows.length; i++) if (!stored[first + i] && !failed.has(i)) duplicates[i] = 1;
          }
          return { failures: own, duplicates };
        }),
      this.options,
      copies,
      payloads,
    );
    const replayed = batch.members.flatMap((m) => m.work.replayOf ?? []);
    if (replayed.length > 0 || (advance !== null && advance.size > 0)) {
      // Statements with parameters go ahead of the COPYs still queued: the order within the transaction is free.
      if (opening !== "") await client.query(opening);
      opening = "";
      if (replayed.length > 0) await client.query(this.options.markReplayedSql, [replayed]);
      if (advance !== null) await advanceSessions(client, this.options.producers, advance);
    }
    await send("COMMIT");
    Atomics.add(this.gauges, COMMIT_GAUGE_LONG, 1);
    if (skips === null) return outcomes.map((o) => ({ outcomes: o, skipped: null }));
    // Back to every member of the batch: a skipped frame stored nothing now (an earlier commit stored it, or nothing will).
    let kept = 0;
    return all.members.map((m, i) => {
      const skipped = skips[i];
      if (skipped === null) return { outcomes: outcomes[kept++], skipped: null };
      return { outcomes: m.work.parts.map(() => ({ failures: [], duplicates: null })), skipped };
    });
  }
}

/**
 * The common batch in one round trip: BEGIN, each deduplicating stream's claim on the one-trip path
 * (id-claim.ts oneTripClaim), every COPY of rows, the batch rows and dead letters, and COMMIT in one Query,
 * the outcomes as they are when it commits (every row stored, none a duplicate: had a row been refused or an id
 * been stored, a statement would have failed). On PostgreSQL's error nothing of it committed: a batch with an id
 * claim is rolled back, and null returned for GroupCommitter.transaction to commit it the long way; the error of
 * a batch without one is thrown, as the long way would throw it. Null too where that way is known to be
 * needed (producer sessions, upserts, replays, an id claim that cannot be entered in one trip).
 * docs/performance.md#round-trips-of-a-group-commit.
 */
async function oneTrip(
  client: pg.Client,
  batch: Batch,
  checks: ReadonlyMap<CommitTarget, CheckedKeys>,
  options: GroupCommitOptions,
): Promise<MemberResult[] | null> {
  if (batch.sessions || batch.members.some((m) => (m.work.replayOf?.length ?? 0) > 0)) return null;
  const statements = ["BEGIN"];
  const payloads: Buffer[] = [];
  let claims = 0;
  const targets = [...batch.parts.keys()].sort((a, b) => a.order - b.order);
  for (const target of targets) {
    if (target.upsert !== null) return null;
    const part = batch.parts.get(target)!;
    if (target.dedup !== null) {
      const claim = oneTripClaim(target.dedup, part.keys, checks.get(target)!);
      if (claim === null) return null;
      statements.push(...claim.statements);
      payloads.push(claim.payload);
      claims++;
    }
    if (part.rows.length > 0) {
      statements.push(target.copySql);
      payloads.push(part.rows.payload(0, part.rows.length));
    }
  }
  // Every row stored, none a duplicate: the outcomes if this Query commits.
  const outcomes = settleMembers(
    batch.members,
    (member) =>
      member.work.parts.map((part) => ({
        failures: [],
        duplicates: part.target.dedup !== null ? new Uint8Array(part.rows.length) : null,
      })),
    options,
    statements,
    payloads,
  );
  statements.push("COMMIT");
  try {
    await copyIn(client, statements.join("; "), payloads);
  } catch (err) {
    // Not PostgreSQL's answer (the connection failed), or a batch without a claim, whose long way is this very
    // Query (a refused row then goes to row isolation): the caller's to handle.
    if (!(err instanceof pg.DatabaseError) || claims === 0) throw err;
    await client.query("ROLLBACK");
    return null;
  }
  return outcomes.map((o) => ({ outcomes: o, skipped: null }));
}

/**
 * Gives each member its part outcomes (`outcomesOf`) through its finalize, and appends the COPYs of the dead
 * letters and batch rows those return to the statements and payloads still to send. The outcomes, in member order.
 */
function settleMembers(
  members: readonly Member[],
  outcomesOf: (member: Member) => PartOutcome[],
  options: GroupCommitOptions,
  statements: string[],
  payloads: Buffer[],
): PartOutcome[][] {
  const outcomes: PartOutcome[][] = [];
  const batchRows: string[] = [];
  const deadLetters: string[] = [];
  for (const member of members) {
    const mine = outcomesOf(member);
    outcomes.push(mine);
    const extra = member.work.finalize(mine);
    if (extra.batchRow !== null) batchRows.push(extra.batchRow);
    for (const d of extra.deadLetters) deadLetters.push(d);
  }
  if (deadLetters.length > 0) {
    statements.push(options.deadLettersCopySql);
    payloads.push(CopyRows.encode(deadLetters).payload());
  }
  if (batchRows.length > 0) {
    statements.push(options.batchesCopySql);
    payloads.push(CopyRows.encode(batchRows).payload());
  }
  return outcomes;
}

interface MemberResult {
  outcomes: PartOutcome[];
  skipped: SessionSkip | null;
}

/** The batch without its skipped members: their rows are not written. */
function regroup(batch: Batch, skips: ReadonlyArray<SessionSkip | null>): Batch {
  const kept = new Batch(batch.priority);
  batch.members.forEach((m, i) => {
    if (skips[i] !== null) return;
    const member: Member = { ...m, offsets: [] };
    for (const part of m.work.parts) {
      let into = kept.parts.get(part.target);
      if (!into) kept.parts.set(part.target, (into = { rows: new BatchRows(), keys: [] }));
      member.offsets.push(into.rows.add(part.rows));
      if (part.keys) for (let r = 0; r < part.keys.length; r++) into.keys.push(part.keys[r]);
    }
    kept.members.push(member);
  });
  return kept;
}
