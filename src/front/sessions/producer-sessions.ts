/**
 * The owner of producer sessions on this daemon (docs/websocket-protocol.md#producer-sessions): it checks
 * producer ids, opens a session by fencing every older one in PostgreSQL, and closes the superseded socket,
 * whether that session lives here or (told by LISTEN/NOTIFY) the new one opened on another daemon.
 */
import type pg from "pg";
import { fenceProducer, forgetIdleProducers, listenForSessions, type OpenedSession, type SessionListener } from "../../storage/producers";
import type { Logger } from "../../ops/logger";

/** Producer ids: 1..128 characters of [A-Za-z0-9._:@-]. */
const PRODUCER_ID = /^[A-Za-z0-9._:@-]{1,128}$/;

/** Close code of a socket whose producer opened a newer session. */
export const CLOSE_SUPERSEDED = 4409;

export function producerIdError(id: string): string | null {
  return PRODUCER_ID.test(id) ? null : `producer: expected 1..128 characters of [A-Za-z0-9._:@-], got ${JSON.stringify(id.slice(0, 140))}`;
}

interface Live {
  epoch: number;
  supersede: () => void;
}

export interface ProducerSessionsOptions {
  pool: pg.Pool;
  connectionString: string;
  schema: string;
  log: Logger;
  /** Rows of producers idle this many days are deleted (null: kept). */
  retentionDays: number | null;
}

/** How often a bounded step of producer retention runs. */
const RETENTION_INTERVAL_MS = 10 * 60 * 1000;

export class ProducerSessions {
  private readonly live = new Map<string, Live>();
  private readonly listener: SessionListener;
  private retention: NodeJS.Timeout | null = null;

  constructor(private readonly options: ProducerSessionsOptions) {
    this.listener = listenForSessions(options.connectionString, (stream, producer, epoch) => this.supersede(stream, producer, epoch));
    if (options.retentionDays !== null) {
      const days = options.retentionDays;
      this.retention = setInterval(() => {
        forgetIdleProducers(options.pool, options.schema, days).then(
          (n) => n > 0 && options.log.info({ deleted: n, days }, "forgot idle producers"),
          (err) => options.log.warn({ err: (err as Error).message }, "producer retention failed"),
        );
      }, RETENTION_INTERVAL_MS);
      this.retention.unref();
    }
  }

  /** Fences every older session of the producer (here: closed at once) and returns the new session's epoch and committed seq. */
  async open(stream: string, producer: string): Promise<OpenedSession> {
    const opened = await fenceProducer(this.options.pool, this.options.schema, stream, producer);
    this.supersede(stream, producer, opened.epoch);
    return opened;
  }

  /**
   * Registers the session's socket; false when a newer session of the producer is already live here (two
   * upgrades raced): the caller closes this one as superseded.
   */
  attach(stream: string, producer: string, epoch: number, supersede: () => void): boolean {
    const key = `${stream}\u0000${producer}`;
    const current = this.live.get(key);
    if (current !== undefined && current.epoch > epoch) return false;
    this.live.set(key, { epoch, supersede });
    if (current !== undefined && current.epoch < epoch) current.supersede();
    return true;
  }

  detach(stream: string, producer: string, epoch: number): void {
    const key = `${stream}\u0000${producer}`;
    if (this.live.get(key)?.epoch === epoch) this.live.delete(key);
  }

  private supersede(stream: string, producer: string, epoch: number): void {
    const key = `${stream}\u0000${producer}`;
    const current = this.live.get(key);
    if (current === undefined || current.epoch >= epoch) return;
    this.live.delete(key);
    current.supersede();
  }

  async close(): Promise<void> {
    if (this.retention !== null) clearInterval(this.retention);
    await this.listener.close();
  }
}
