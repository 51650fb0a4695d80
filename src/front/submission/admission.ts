/**
 * Who may submit what, now: the checks every transport makes before a body may take ring space. One owner,
 * so HTTP, WebSocket and the line stream cannot drift apart (see docs/architecture.md#admission).
 */
import { isDenial, type Auth, type Denial } from "../../security/auth";
import type { ApiKey } from "../../security/api-keys";
import type { Database } from "../../storage/database";
import { LINE_ROUTER, type StreamDefinition } from "../../shared/stream-definition";

/** An answer that refuses the request before anything was stored. */
export interface Refusal {
  status: number;
  code: string;
  message: string;
  headers?: Record<string, string>;
}

/** A caller admitted to one stream. */
export interface Admitted {
  key: ApiKey;
  stream: Pick<StreamDefinition, "name" | "formats">;
}

/** The mixed TPC-H line stream: routed by line prefix in the workers, so it has no definition of its own. */
const LINE_STREAM: Admitted["stream"] = { name: LINE_ROUTER, formats: ["text"] };

export interface AdmissionOptions {
  auth: Auth;
  streams: ReadonlyMap<string, StreamDefinition>;
  db: Database;
  retryAfterSeconds: number;
}

export class Admission {
  private draining = false;
  private readonly retryAfter: Record<string, string>;

  constructor(private readonly options: AdmissionOptions) {
    this.retryAfter = { "Retry-After": String(options.retryAfterSeconds) };
  }

  private leaving = false;

  /** Set by SIGTERM: new requests, frames and connections are refused while in-flight work drains. */
  get isDraining(): boolean {
    return this.draining;
  }

  /** What `/health` says: draining from SIGTERM on, also during the drain delay when work is still taken. */
  get isLeaving(): boolean {
    return this.leaving || this.draining;
  }

  /**
   * SIGTERM with a drain delay: only `/health` changes (503 "draining") so a load balancer stops sending
   * here before anything is refused (docs/operations.md#several-daemons-behind-a-load-balancer).
   */
  startLeaving(): void {
    this.leaving = true;
  }

  startDraining(): void {
    this.draining = true;
  }

  /**
   * The caller's key and the stream, or the refusal: 401 no or bad key, 404 unknown stream, 403 a stream
   * the key may not write, 429 the key's rate bucket in debt (`rate`: WebSocket producers are slowed by
   * delayed acks instead), 503 while draining.
   */
  admit(caller: ApiKey | Denial, streamName: string, rate = true): Admitted | Refusal {
    if (isDenial(caller)) return caller;
    const stream = streamName === LINE_ROUTER ? LINE_STREAM : this.options.streams.get(streamName);
    if (!stream) {
      return {
        status: 404,
        code: "unknown_stream",
        message: `unknown stream "${streamName}"; streams: ${[...this.options.streams.keys()].join(", ")}`,
      };
    }
    const denied = this.options.auth.permit(caller, stream.name, rate);
    if (denied) return denied;
    if (this.draining)
      return {
        status: 503,
        code: "shutting_down",
        message: "ingestd is shutting down; retry on another instance or later",
        headers: this.retryAfter,
      };
    return { key: caller, stream };
  }

  /** 503 while PostgreSQL is unreachable: nothing could be committed, so nothing is taken in. */
  database(): Refusal | null {
    if (this.options.db.up) return null;
    return {
      status: 503,
      code: "database_unavailable",
      message: "database unavailable; nothing was stored, retry later",
      headers: this.retryAfter,
    };
  }
}

export function isRefusal(v: Admitted | Refusal): v is Refusal {
  return (v as Refusal).status !== undefined;
}
