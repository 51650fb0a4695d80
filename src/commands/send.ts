/**
 * `ingestd send`: reads records from a file or stdin and sends them through the producer client
 * (src/client) over a producer session, so every line is stored exactly once even across reconnects and
 * daemon restarts. NDJSON / JSON lines, or text lines for line streams (`--stream tpch`: mixed TPC-H
 * lines, in file order, so an order commits no later than its line items). Progress on stderr (a live line
 * on a terminal); at the end one JSON line on stdout. Exit 0 all committed, 1 some rejected (listed on
 * stderr), 2 could not deliver.
 */
import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { parseArgs } from "node:util";
import { randomUUID } from "node:crypto";
import { Producer, type RecordOutcome } from "../client";
import { LINE_ROUTER } from "../shared/stream-definition";
import { UsageError } from "./usage-error";

export const SEND_HELP = `Usage: ingestd send --url ws://HOST:PORT --stream NAME [--key KEY] [--producer ID] [--spool DIR]
                    [--format json|text] [--give-up-after SECONDS] [FILE]

Sends NDJSON / JSON lines (text lines for line streams; --stream tpch takes mixed TPC-H lines) from FILE
or stdin over a WebSocket producer session: each record stored once, resumed after reconnects.
  --producer ID      resume this producer's session (default: a new id, or the spool's own)
  --spool DIR        keep unacknowledged frames in DIR: a killed send resends them when run again
  --give-up-after S  exit 2 after S seconds without a session (default 60)
Prints {"sent","accepted","rejected","duplicates","seconds"} on stdout.
Exit status: 0 every record committed, 1 some rejected (listed on stderr), 2 could not deliver, 64 usage.
`;

/** Streams whose records are text lines, not JSON: the mixed TPC-H router and every line-format stream. */
function textStream(name: string): boolean {
  if (name === LINE_ROUTER) return true;
  const { streams } = require("../../config/streams") as typeof import("../../config/streams");
  const stream = streams.find((s) => s.name === name);
  return stream !== undefined && !stream.formats.includes("json");
}

interface Tally {
  sent: number;
  accepted: number;
  rejected: number;
  duplicates: number;
}

function parseSendArgs(argv: string[]) {
  try {
    return parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        url: { type: "string" },
        stream: { type: "string" },
        key: { type: "string" },
        producer: { type: "string" },
        spool: { type: "string" },
        format: { type: "string" },
        "give-up-after": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (err) {
    throw new UsageError(`${(err as Error).message}\n\n${SEND_HELP}`);
  }
}

export async function sendCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parseSendArgs(argv);
  if (values.help) {
    process.stdout.write(SEND_HELP);
    return 0;
  }
  if (!values.url || !/^wss?:\/\//.test(values.url))
    throw new UsageError(`--url: expected ws://HOST:PORT or wss://HOST:PORT\n\n${SEND_HELP}`);
  if (!values.stream) throw new UsageError(`--stream: required\n\n${SEND_HELP}`);
  if (positionals.length > 1) throw new UsageError(`at most one FILE, got ${positionals.length}\n\n${SEND_HELP}`);
  const format = values.format ?? (textStream(values.stream) ? "text" : "json");
  if (format !== "json" && format !== "text") throw new UsageError(`--format: expected json or text, got ${format}`);
  const giveUp = values["give-up-after"] === undefined ? 60 : Number(values["give-up-after"]);
  if (!(giveUp > 0)) throw new UsageError(`--give-up-after: expected seconds > 0`);
  const file = positionals[0];
  if (file !== undefined && file !== "-" && !fs.existsSync(file)) throw new UsageError(`FILE: not found: ${file}`);

  const started = Date.now();
  const producer = new Producer({
    url: values.url,
    stream: values.stream,
    key: values.key,
    producer: values.producer ?? (values.spool !== undefined ? spoolProducerId(values.spool) : `send-${randomUUID()}`),
    spoolDir: values.spool,
    format,
    giveUpAfterMs: giveUp * 1000,
    onEvent: (e) => {
      if (e.type === "disconnected") note(`connection lost (${e.code}${e.reason ? ` ${e.reason}` : ""}); retrying in ${e.retryInMs} ms`);
    },
  });
  const tally: Tally = { sent: 0, accepted: 0, rejected: 0, duplicates: 0 };
  const progress = startProgress(tally, started);
  const outcomes: Array<Promise<void>> = [];
  let failure: Error | null = null;
  const input = file === undefined || file === "-" ? process.stdin : fs.createReadStream(file);
  const lines = readline.createInterface({ input, crlfDelay: Infinity });
  let lineNo = 0;
  try {
    for await (const line of lines) {
      lineNo++;
      if (line.trim() === "") continue;
      const at = lineNo;
      let record: unknown = line;
      if (format === "json") {
        try {
          record = JSON.parse(line);
        } catch (err) {
          tally.sent++;
          reject(tally, at, [{ path: "$", message: `malformed JSON: ${(err as Error).message}` }]);
          continue;
        }
      }
      tally.sent++;
      const { outcome } = await producer.enqueue(record);
      outcomes.push(
        outcome.then(
          (o) => count(tally, at, o),
          (err: Error) => void (failure ??= err),
        ),
      );
    }
    await Promise.all(outcomes);
    if (failure === null) await producer.close();
  } catch (err) {
    failure = err as Error;
  }
  progress.stop();
  if (failure !== null) await producer.destroy().catch(() => undefined);
  const seconds = Math.round((Date.now() - started) / 10) / 100;
  process.stdout.write(`${JSON.stringify({ ...tally, seconds })}\n`);
  if (failure !== null) {
    note(`could not deliver: ${(failure as Error).message}`);
    return 2;
  }
  return tally.rejected > 0 ? 1 : 0;
}

function count(tally: Tally, line: number, o: RecordOutcome): void {
  if (o.status === "rejected") reject(tally, line, o.errors);
  else if (o.status === "duplicate") tally.duplicates++;
  else tally.accepted++; // "committed": stored by an earlier connection whose ack was lost
}

function reject(tally: Tally, line: number, errors: ReadonlyArray<{ path: string; message: string }>): void {
  tally.rejected++;
  note(`line ${line}: rejected: ${errors.map((e) => `${e.path}: ${e.message}`).join("; ")}`);
}

/** A spool resumes its own producer: the id is kept next to it. */
function spoolProducerId(dir: string): string {
  const file = path.join(dir, "producer-id");
  try {
    return fs.readFileSync(file, "utf8").trim();
  } catch {
    fs.mkdirSync(dir, { recursive: true });
    const id = `send-${randomUUID()}`;
    fs.writeFileSync(file, `${id}\n`);
    return id;
  }
}

let liveLine = false;
function note(text: string): void {
  if (liveLine) process.stderr.write("\r\x1b[2K");
  process.stderr.write(`ingestd send: ${text}\n`);
}

/** A live line on a terminal, redrawn every 200 ms; nothing when stderr is not a terminal. */
function startProgress(tally: Tally, started: number): { stop(): void } {
  if (!process.stderr.isTTY) return { stop: () => undefined };
  liveLine = true;
  const draw = () => {
    const s = (Date.now() - started) / 1000;
    const done = tally.accepted + tally.rejected + tally.duplicates;
    process.stderr.write(
      `\r\x1b[2Ksent ${tally.sent}  committed ${done} (accepted ${tally.accepted}, rejected ${tally.rejected}, duplicates ${tally.duplicates})  ${Math.round(done / Math.max(s, 0.001))}/s`,
    );
  };
  const timer = setInterval(draw, 200);
  return {
    stop() {
      clearInterval(timer);
      draw();
      process.stderr.write("\n");
      liveLine = false;
    },
  };
}
