/**
 * API keys (docs/security.md#api-keys): who may write which streams, and at what rate.
 *
 * Keys come from the keys file (`apiKeysFile` / API_KEYS_FILE) and from INGESTD_API_KEYS; both hold only
 * the SHA-256 of each key. Why SHA-256 and not a slow KDF (scrypt, argon2): the keys are 256-bit random
 * tokens minted by `ingestd keys new`, not passwords a person chose, so there is no dictionary to slow
 * down; a preimage search on SHA-256 over 2^256 candidates is hopeless either way. A KDF costs tens of
 * milliseconds per call and would be paid on every request; one SHA-256 of a short token is about a
 * microsecond, so the check stays on the hot path (a header read, one hash, one Map lookup).
 *
 * Nothing here ever logs or returns a presented token, and error messages never echo a `hash` value
 * (someone may have pasted a raw key into that field by mistake).
 */
import crypto, { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import fs from "node:fs";
import { parseArgs } from "node:util";
import typia, { type tags } from "typia";
import { RateLimiter, type TokenBucket } from "./rate-limiter";

/** One entry of the keys file (or of INGESTD_API_KEYS). */
export interface ApiKeyEntry {
  /** Names the key in logs and errors; not secret. */
  id: string & tags.MinLength<1> & tags.MaxLength<64> & tags.Pattern<"^[A-Za-z0-9][A-Za-z0-9._@-]*$">;
  /** `sha256:<64 lowercase hex>` (the `sha256:` prefix may be left out). */
  hash: string & tags.Pattern<"^(sha256:)?[0-9a-f]{64}$">;
  /** Streams the key may write; `*` for all, `tpch` for the four TPC-H line streams and line endpoints. */
  streams: Array<string & tags.MinLength<1>> & tags.MinItems<1>;
  /**
   * Streams whose records and dead letters the key may read back (docs/security.md#reading-back); `*` for
   * all, `tpch` for the four line streams. Omitted: none.
   */
  read?: Array<string & tags.MinLength<1>>;
  /** Events per second; omitted or null: no limit. */
  rate?: (number & tags.ExclusiveMinimum<0>) | null;
  /** Bucket size in events; omitted or null: one second of `rate`. */
  burst?: (number & tags.Minimum<1>) | null;
  /** Free text for operators (owner, ticket, date); ignored by the daemon. */
  comment?: string;
}

export interface ApiKeysFile {
  keys: ApiKeyEntry[];
}

const validateFile = typia.createValidateEquals<ApiKeysFile>();

/** A loaded key: what the hot path needs, precomputed. */
export interface ApiKey {
  id: string;
  /** Every stream this key may write, aliases expanded (`tpch` ⇄ the four line streams). */
  streams: ReadonlySet<string>;
  all: boolean;
  /** Every stream this key may read back, aliases expanded. */
  read: ReadonlySet<string>;
  readAll: boolean;
  /** Null: no rate limit. */
  bucket: TokenBucket | null;
  digest: Buffer;
}

/** Stands for "no keys configured": every ingest request is let through, unlimited. */
export const OPEN_ACCESS: ApiKey = Object.freeze({
  id: "(open)",
  streams: new Set<string>(),
  all: true,
  read: new Set<string>(),
  readAll: true,
  bucket: null,
  digest: Buffer.alloc(32),
});

/** Names the keys loader needs to know: every stream, and those fed by the TPC-H line endpoints. */
export interface StreamCatalog {
  names: readonly string[];
  /** The streams a line endpoint routes to by prefix (orders, lineitem, customer, part). */
  lineStreams: readonly string[];
  /** The pseudo-stream of the line endpoints (`tpch`). */
  lineRouter: string;
}

export class ApiKeysError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ApiKeysError";
  }
}

export const API_KEYS_ENV = "INGESTD_API_KEYS";
/** Longer than any key we mint by far; longer tokens are refused before hashing. */
const MAX_TOKEN_LENGTH = 512;

/**
 * SHA-256 digest of a token. crypto.hash (Node >= 20.12) skips the Hash object: about half the cost of
 * createHash (measured ~5 vs ~9 µs on the 2-core CI machines), which is most of a request's auth cost.
 */
const sha256: (token: string) => Buffer =
  typeof (crypto as any).hash === "function"
    ? (token) => (crypto as any).hash("sha256", token, "buffer") as Buffer
    : (token) => createHash("sha256").update(token, "utf8").digest();

/** SHA-256 of a token, hex, as stored in the keys file. */
export function hashToken(token: string): string {
  return createHash("sha256").update(token, "utf8").digest("hex");
}

/** A new random key: `igd_` + 256 random bits, base64url. The prefix lets secret scanners spot leaks. */
export function mintToken(): string {
  return `igd_${randomBytes(32).toString("base64url")}`;
}

/**
 * The key a request presents: `Authorization: Bearer <key>`, else `X-API-Key: <key>`, else (WebSocket
 * upgrades) the `token` query parameter. Empty string when none.
 */
export function presentedToken(authorization: string, xApiKey: string, queryToken = ""): string {
  if (authorization.length > 7 && authorization.slice(0, 7).toLowerCase() === "bearer ") return authorization.slice(7).trim();
  if (xApiKey !== "") return xApiKey.trim();
  return queryToken;
}

/** Parses INGESTD_API_KEYS: `id:sha256hex:stream,stream[:rate[:burst]]` entries separated by `;`. */
export function parseEnvKeys(value: string): unknown[] {
  const entries: unknown[] = [];
  const parts = value
    .split(/[;\n]/)
    .map((s) => s.trim())
    .filter((s) => s !== "");
  parts.forEach((part, i) => {
    const fields = part.split(":").map((s) => s.trim());
    // Accept the file's `sha256:<hex>` spelling too: it splits into two fields here.
    if (fields[1] === "sha256") fields.splice(1, 2, `sha256:${fields[2] ?? ""}`);
    if (fields.length < 3 || fields.length > 5) {
      throw new ApiKeysError(`${API_KEYS_ENV} entry ${i + 1}: expected id:sha256hex:streams[:rate[:burst]] (${fields.length} fields)`);
    }
    const [id, hash, streams, rate, burst] = fields;
    const num = (name: string, v: string | undefined) => {
      if (v === undefined || v === "") return null;
      if (!/^\d+(\.\d+)?$/.test(v))
        throw new ApiKeysError(`${API_KEYS_ENV} entry ${i + 1} (${id}): ${name}: expected a positive number, got ${JSON.stringify(v)}`);
      return Number(v);
    };
    entries.push({
      id,
      hash,
      streams: streams
        .split(",")
        .map((s) => s.trim())
        .filter((s) => s !== ""),
      rate: num("rate", rate),
      burst: num("burst", burst),
    });
  });
  return entries;
}

function describeErrors(where: string, errors: typia.IValidation.IError[]): string {
  const lines = errors.map((e) => {
    const field = e.path.replace(/^\$input\.?/, "") || "(root)";
    if (e.expected === "undefined") return `${field}: unknown field`;
    if (e.value === undefined) return `${field}: missing, expected ${e.expected}`;
    // Never echo a hash field: it might hold a raw key pasted there by mistake.
    if (/\.hash$/.test(field)) return `${field}: expected "sha256:" and 64 lowercase hex digits (the SHA-256 of the key, not the key)`;
    return `${field}: expected ${e.expected}, got ${JSON.stringify(e.value)}`;
  });
  return `${where}:\n  ${lines.join("\n  ")}`;
}

/** Reads and validates the keys file and INGESTD_API_KEYS; throws ApiKeysError naming the field. */
export function readKeyEntries(file: string | null, envValue: string | undefined, catalog: StreamCatalog): ApiKeyEntry[] {
  const entries: Array<{ entry: ApiKeyEntry; where: string }> = [];
  if (file !== null) {
    let raw: unknown;
    try {
      raw = JSON.parse(fs.readFileSync(file, "utf8"));
    } catch (err) {
      throw new ApiKeysError(`API keys file ${file}: ${(err as Error).message}`);
    }
    const result = validateFile(raw);
    if (!result.success) throw new ApiKeysError(describeErrors(`invalid API keys file ${file}`, result.errors));
    result.data.keys.forEach((entry, i) => entries.push({ entry, where: `${file}: keys[${i}]` }));
  }
  if (envValue !== undefined && envValue.trim() !== "") {
    const raw = { keys: parseEnvKeys(envValue) };
    const result = validateFile(raw);
    if (!result.success) throw new ApiKeysError(describeErrors(`invalid ${API_KEYS_ENV}`, result.errors));
    result.data.keys.forEach((entry, i) => entries.push({ entry, where: `${API_KEYS_ENV} entry ${i + 1}` }));
  }
  const known = new Set([...catalog.names, catalog.lineRouter, "*"]);
  const ids = new Map<string, string>();
  const hashes = new Map<string, string>();
  for (const { entry, where } of entries) {
    for (const [field, list] of [["streams", entry.streams] as const, ["read", entry.read ?? []] as const]) {
      for (const s of list) {
        if (!known.has(s))
          throw new ApiKeysError(`${where} (${entry.id}): ${field}: unknown stream ${JSON.stringify(s)}; known: ${[...known].join(", ")}`);
      }
    }
    const prior = ids.get(entry.id);
    if (prior) throw new ApiKeysError(`${where}: id ${JSON.stringify(entry.id)} is already used by ${prior}`);
    ids.set(entry.id, where);
    const hex = entry.hash.replace(/^sha256:/, "");
    const same = hashes.get(hex);
    if (same) throw new ApiKeysError(`${where} (${entry.id}): hash: the same key is already listed as ${same}`);
    hashes.set(hex, entry.id);
  }
  return entries.map((e) => e.entry);
}

/**
 * The loaded keys. Lookup: SHA-256 of the presented token, a Map lookup on its first 32 bits, then
 * crypto.timingSafeEqual against the full stored digest. Timing of the Map step depends only on the hash
 * of the guess, which an attacker cannot steer toward a stored hash, so it reveals nothing usable; the
 * decisive comparison is constant-time.
 */
export class KeyStore {
  /** True when no keys file and no INGESTD_API_KEYS are configured: ingest is open to anyone. */
  readonly open: boolean;
  private index = new Map<number, ApiKey[]>();
  private ids: string[] = [];
  private readonly limiter = new RateLimiter();

  constructor(
    private readonly file: string | null,
    private readonly envValue: string | undefined,
    private readonly catalog: StreamCatalog,
  ) {
    // Fixed for the life of the process: a reload that empties the file leaves the daemon closed, not open.
    this.open = file === null && (envValue === undefined || envValue.trim() === "");
    this.reload();
  }

  get size(): number {
    return this.ids.length;
  }

  /** Key ids (not secret), for logs. */
  get keyIds(): readonly string[] {
    return this.ids;
  }

  /** Re-reads the sources; on error throws ApiKeysError and keeps the keys loaded before. */
  reload(): void {
    if (this.open) return;
    const entries = readKeyEntries(this.file, this.envValue, this.catalog);
    const index = new Map<number, ApiKey[]>();
    for (const e of entries) {
      const streams = expandLineAlias(e.streams, this.catalog);
      const read = expandLineAlias(e.read ?? [], this.catalog);
      const digest = Buffer.from(e.hash.replace(/^sha256:/, ""), "hex");
      const key: ApiKey = {
        id: e.id,
        streams,
        all: streams.has("*"),
        read,
        readAll: read.has("*"),
        bucket: this.limiter.bucketFor(e.id, e.rate ?? null, e.burst ?? null),
        digest,
      };
      const slot = digest.readUInt32BE(0);
      const list = index.get(slot);
      if (list) list.push(key);
      else index.set(slot, [key]);
    }
    this.limiter.retain(new Set(entries.map((e) => e.id)));
    this.index = index;
    this.ids = entries.map((e) => e.id);
  }

  /**
   * The current entry of a key loaded before a reload (same secret), or null once it was removed: live
   * WebSocket connections are re-checked with this after SIGHUP.
   */
  current(key: ApiKey): ApiKey | null {
    if (this.open || key === OPEN_ACCESS) return key;
    const candidates = this.index.get(key.digest.readUInt32BE(0));
    if (candidates === undefined) return null;
    for (const k of candidates) if (timingSafeEqual(k.digest, key.digest)) return k;
    return null;
  }

  /** The key a token belongs to; OPEN_ACCESS in open mode; null for a missing or unknown token. */
  authenticate(token: string): ApiKey | null {
    if (this.open) return OPEN_ACCESS;
    if (token.length === 0 || token.length > MAX_TOKEN_LENGTH) return null;
    const digest = sha256(token);
    const candidates = this.index.get(digest.readUInt32BE(0));
    if (candidates === undefined) return null;
    for (const key of candidates) if (timingSafeEqual(key.digest, digest)) return key;
    return null;
  }
}

/**
 * A key's stream list with the line alias expanded: `tpch` grants the four line streams; all four grant the
 * line endpoints (`tpch`), since a line is routed by its prefix in a worker and the front thread cannot see
 * which of them a body touches.
 */
function expandLineAlias(list: readonly string[], catalog: StreamCatalog): Set<string> {
  const streams = new Set(list);
  const lineStreams = catalog.lineStreams;
  if (streams.has(catalog.lineRouter)) for (const s of lineStreams) streams.add(s);
  if (lineStreams.length > 0 && lineStreams.every((s) => streams.has(s))) streams.add(catalog.lineRouter);
  return streams;
}

/** Whether a key may read back a stream's records and dead letters. */
export function mayRead(key: ApiKey, stream: string): boolean {
  return key.readAll || key.read.has(stream);
}

/** Whether a key may write a stream (or the `tpch` line router). */
export function mayWrite(key: ApiKey, stream: string): boolean {
  return key.all || key.streams.has(stream);
}

// ---------------------------------------------------------------------------------------------------------
// `ingestd keys new`: mint a key, print it once with its keys-file entry.

export const KEYS_HELP = `Usage: ingestd keys new --id ID --streams S1,S2 [--rate N] [--burst N]

Mints a random API key and prints it once, with the entry to add to the keys file (API_KEYS_FILE) and
the same entry in INGESTD_API_KEYS form. Only the SHA-256 of the key is stored; the key itself cannot be
recovered later. Streams: stream names, "tpch" (the TPC-H line endpoints and their four streams) or "*".
--rate is in events per second (omit for no limit); --burst defaults to one second of rate.
After editing the keys file, send SIGHUP to the daemon (systemctl reload ingestd) to load it.
`;

export function runKeysCommand(argv: string[], out: NodeJS.WritableStream, catalog: StreamCatalog): number {
  const [sub, ...rest] = argv;
  if (sub === undefined || sub === "--help" || sub === "-h" || sub === "help") {
    out.write(KEYS_HELP);
    return sub === undefined ? 64 : 0;
  }
  if (sub !== "new") throw new ApiKeysError(`keys: unknown subcommand ${JSON.stringify(sub)}\n\n${KEYS_HELP}`);
  const { values } = parseArgs({
    args: rest,
    options: { id: { type: "string" }, streams: { type: "string" }, rate: { type: "string" }, burst: { type: "string" } },
  });
  if (!values.id) throw new ApiKeysError(`keys new: --id is required\n\n${KEYS_HELP}`);
  if (!values.streams) throw new ApiKeysError(`keys new: --streams is required\n\n${KEYS_HELP}`);
  const num = (name: string, v: string | undefined) => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!/^\d+(\.\d+)?$/.test(v) || !(n > 0))
      throw new ApiKeysError(`keys new: --${name}: expected a positive number, got ${JSON.stringify(v)}`);
    return n;
  };
  const token = mintToken();
  const entry: ApiKeyEntry = {
    id: values.id as ApiKeyEntry["id"],
    hash: `sha256:${hashToken(token)}` as ApiKeyEntry["hash"],
    streams: values.streams
      .split(",")
      .map((s) => s.trim())
      .filter((s) => s !== "") as ApiKeyEntry["streams"],
  };
  const rate = num("rate", values.rate);
  const burst = num("burst", values.burst);
  if (rate !== undefined) entry.rate = rate;
  if (burst !== undefined) entry.burst = burst;
  // Validate exactly as the daemon will, so a minted entry always loads.
  readKeyEntriesFromValue({ keys: [entry] }, catalog);
  const envForm = [entry.id, hashToken(token), entry.streams.join(","), rate ?? "", burst ?? ""].join(":").replace(/:+$/, "");
  out.write(
    `API key for ${entry.id} (shown only now: give it to the producer, it cannot be recovered):\n` +
      `  ${token}\n\n` +
      `Keys file entry (add to the "keys" array of API_KEYS_FILE, then SIGHUP the daemon):\n` +
      `  ${JSON.stringify(entry)}\n\n` +
      `Or in ${API_KEYS_ENV} (entries separated by ";"):\n` +
      `  ${envForm}\n\n` +
      `Producers send it as "Authorization: Bearer <key>" or "X-API-Key: <key>" (WebSocket: also ?token=<key>).\n`,
  );
  return 0;
}

function readKeyEntriesFromValue(value: unknown, catalog: StreamCatalog): void {
  const result = validateFile(value);
  if (!result.success) throw new ApiKeysError(describeErrors("keys new", result.errors));
  const known = new Set([...catalog.names, catalog.lineRouter, "*"]);
  for (const s of result.data.keys[0].streams) {
    if (!known.has(s)) throw new ApiKeysError(`keys new: --streams: unknown stream ${JSON.stringify(s)}; known: ${[...known].join(", ")}`);
  }
}

/** The catalog of the streams compiled into this build. */
export function streamCatalog(): StreamCatalog {
  // Required here, not imported at the top: the typia validators of every stream load only when needed.
  const { streams } = require("../../config/streams") as typeof import("../../config/streams");
  const { LINE_ROUTER } = require("../shared/stream-definition") as typeof import("../shared/stream-definition");
  return {
    names: streams.map((s) => s.name),
    lineStreams: streams.filter((s) => s.linePrefix !== undefined).map((s) => s.name),
    lineRouter: LINE_ROUTER,
  };
}
