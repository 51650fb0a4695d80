/**
 * COPY FROM STDIN in one round trip: a simple Query message (one or more statements, any of them a
 * `COPY ... FROM STDIN`) written in one go with every COPY's data (CopyData, CopyDone), without waiting for
 * each CopyInResponse as pg-copy-streams does. A group commit's statements around its COPYs (SAVEPOINT,
 * RELEASE, BEGIN, COMMIT) travel in the same message, so a commit waits for PostgreSQL a few times instead of
 * ten (docs/performance.md#round-trips-of-a-group-commit).
 *
 * In step after an error: PostgreSQL skips the rest of a Query's statements once one fails and drops every
 * CopyData and CopyDone it reads outside copy-in mode (the protocol's COPY flow), so the data of the COPYs
 * that never ran is discarded and the next Query is read as the next command.
 */
import type pg from "pg";

/** CopyData's type byte ('d'); its length word counts itself. */
const COPY_DATA = 0x64;
/** CopyDone ('c'), empty. */
const COPY_DONE = Buffer.from([0x63, 0, 0, 0, 4]);

/** The parts of pg's Connection a submittable writes to. */
interface Connection {
  stream: { cork(): void; uncork(): void; write(chunk: Buffer): boolean };
  query(text: string): void;
}

/** A pg Submittable: the Client hands it the backend's messages until ReadyForQuery (or an error). */
class CopyIn {
  readonly done: Promise<void>;
  private resolve!: () => void;
  private reject!: (err: Error) => void;

  constructor(
    private readonly text: string,
    private readonly payloads: readonly Buffer[],
  ) {
    this.done = new Promise<void>((resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    });
  }

  submit(connection: Connection): void {
    const stream = connection.stream;
    // Corked: the Query and every COPY's data leave in one writev.
    stream.cork();
    connection.query(this.text);
    for (const payload of this.payloads) {
      if (payload.length > 0) {
        const header = Buffer.allocUnsafe(5);
        header[0] = COPY_DATA;
        header.writeUInt32BE(payload.length + 4, 1);
        stream.write(header);
        stream.write(payload);
      }
      stream.write(COPY_DONE);
    }
    stream.uncork();
  }

  /** The data went with the Query. */
  handleCopyInResponse(): void {}
  handleCommandComplete(): void {}
  handleRowDescription(): void {}
  handleDataRow(): void {}
  handleEmptyQuery(): void {}
  handlePortalSuspended(): void {}

  handleError(err: Error): void {
    this.reject(err);
  }

  handleReadyForQuery(): void {
    this.resolve();
  }
}

/**
 * Runs `text` (statements separated by `;`), feeding its COPY FROM STDIN statements `payloads` in order, one
 * payload each. Resolves once every statement ran; rejects with the first statement's error (the rest did not run).
 */
export function copyIn(client: pg.ClientBase, text: string, payloads: readonly Buffer[]): Promise<void> {
  const query = new CopyIn(text, payloads);
  client.query(query as unknown as pg.Submittable);
  return query.done;
}
