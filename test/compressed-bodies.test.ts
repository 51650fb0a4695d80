/**
 * Compressed request bodies against the real daemon and a real PostgreSQL: each Content-Encoding lands
 * its rows; a gzip bomb is refused with 413 without the daemon's memory following it; an unknown encoding
 * is refused with 415; WebSocket frames come permessage-deflated when the producer asks.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import { describe, test } from "node:test";
import zlib from "node:zlib";
import { useDaemon } from "./fixture";
import { event, openWs, post } from "./harness";

const ingestUrl = () => `${fx.daemon.base}/v1/streams/events/events`;

async function countIds(prefix: string): Promise<number> {
  const res = await fx.db.query("SELECT count(*)::int AS n FROM events WHERE event_id LIKE $1 || '%'", [prefix]);
  return res.rows[0].n;
}

/** The daemon's resident memory (front thread and workers: one process) in MiB. */
function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
  assert.ok(m, "VmRSS in /proc/<pid>/status");
  return Number(m[1]) / 1024;
}

function ndjson(prefix: string, n: number): string {
  return Array.from({ length: n }, (_, i) => JSON.stringify(event(`${prefix}${i}`))).join("\n") + "\n";
}

/** A database, and a daemon taking bodies up to 16 MiB (compressed and inflated). */
const fx = useDaemon({ env: { MAX_BODY_MB: "16" } });

describe("Content-Encoding request bodies", () => {
  const encodings: Array<[name: string, header: string, compress: (b: Buffer) => Buffer]> = [
    ["gzip", "gzip", (b) => zlib.gzipSync(b)],
    ["deflate (zlib-wrapped)", "deflate", (b) => zlib.deflateSync(b)],
    ["deflate (raw, as some clients send it)", "deflate", (b) => zlib.deflateRawSync(b)],
    ["br", "br", (b) => zlib.brotliCompressSync(b)],
  ];
  for (const [i, [name, header, compress]] of encodings.entries()) {
    test(`${name}: an NDJSON body is inflated in the workers and every record is stored`, async () => {
      const prefix = `enc${i}-`;
      const plain = Buffer.from(ndjson(prefix, 200));
      const body = compress(plain);
      assert.ok(body.length < plain.length / 3, "the body really is compressed");
      const res = await post(ingestUrl(), body, "application/x-ndjson", { "content-encoding": header });
      assert.equal(res.status, 200, res.text);
      assert.equal(res.json.accepted, 200);
      assert.equal(await countIds(prefix), 200);
    });
  }

  test("a gzipped JSON array with one bad record: 207 naming it, the others stored", async () => {
    const records = [event("encjson-0"), { event_id: "encjson-1", service_name: 5 }, event("encjson-2")];
    const res = await post(ingestUrl(), zlib.gzipSync(JSON.stringify(records)), "application/json", { "Content-Encoding": "GZIP" });
    assert.equal(res.status, 207, res.text);
    assert.equal(res.json.accepted, 2);
    assert.equal(res.json.errors[0].index, 1);
    assert.equal(await countIds("encjson-"), 2);
  });

  test("a body that is not valid gzip: 400 naming the encoding, nothing stored", async () => {
    const good = zlib.gzipSync(ndjson("encbad-", 5));
    const broken = Buffer.concat([good.subarray(0, 12), Buffer.from("this is not deflate data at all"), good.subarray(12)]);
    const res = await post(ingestUrl(), broken, "application/x-ndjson", { "content-encoding": "gzip" });
    assert.equal(res.status, 400, res.text);
    assert.equal(res.json.error, "malformed_body");
    assert.match(res.json.message, /not valid gzip data/);
    assert.equal(await countIds("encbad-"), 0);
  });

  test("unknown or stacked encodings: 415 naming the encoding, nothing stored", async () => {
    for (const header of ["compress", "zstd", "gzip, br"]) {
      const res = await post(ingestUrl(), ndjson("encunk-", 3), "application/x-ndjson", { "content-encoding": header });
      assert.equal(res.status, 415, `${header}: ${res.text}`);
      assert.equal(res.json.error, "unsupported_content_encoding");
      assert.ok(res.json.message.includes(JSON.stringify(header)), res.json.message);
      assert.equal(res.headers.get("accept-encoding"), "gzip, deflate, br");
    }
    assert.equal(await countIds("encunk-"), 0);
  });

  test("a gzip bomb (1 MiB expanding to 1 GiB) is refused with 413, and the daemon's memory stays where it was", async () => {
    // 1,024 gzip members of 1 MiB of zeros each: gunzip reads concatenated members as one body of 1 GiB.
    const member = zlib.gzipSync(Buffer.alloc(1024 * 1024), { level: 9 });
    const bomb = Buffer.concat(Array.from({ length: 1024 }, () => member));
    assert.ok(bomb.length < 2 * 1024 * 1024, `bomb is ${bomb.length} bytes`);
    const pid = fx.daemon.child.pid!;
    const before = rssMiB(pid);
    const peaks: number[] = [];
    for (let round = 0; round < 4; round++) {
      const sampler = setInterval(() => peaks.push(rssMiB(pid)), 20);
      const res = await post(ingestUrl(), bomb, "application/x-ndjson", { "content-encoding": "gzip" }).finally(() =>
        clearInterval(sampler),
      );
      assert.equal(res.status, 413, res.text);
      assert.equal(res.json.error, "body_too_large");
      assert.match(res.json.message, /MAX_BODY_MB/);
    }
    const peak = Math.max(before, ...peaks);
    const afterwards = rssMiB(pid);
    console.log(
      `gzip bomb: daemon RSS ${before.toFixed(0)} MiB before, peak ${peak.toFixed(0)} MiB, ${afterwards.toFixed(0)} MiB after 4 bombs`,
    );
    assert.ok(peak < 512, `peak RSS ${peak.toFixed(0)} MiB`);
    // Each inflation stops at MAX_BODY_MB (16 MiB): the four bombs cost tens of MiB, never the gigabyte.
    assert.ok(peak - before < 200, `RSS grew from ${before.toFixed(0)} to ${peak.toFixed(0)} MiB`);
    // The daemon still takes compressed bodies afterwards.
    const res = await post(ingestUrl(), zlib.gzipSync(ndjson("encafter-", 3)), "application/x-ndjson", { "content-encoding": "gzip" });
    assert.equal(res.status, 200, res.text);
    assert.equal(await countIds("encafter-"), 3);
  });
});

describe("WebSocket permessage-deflate", () => {
  test("a producer that asks for permessage-deflate gets it, and its compressed frames are stored", async () => {
    const ws = await openWs(`${fx.daemon.wsBase}/v1/ws?stream=events`, 5000, { perMessageDeflate: { threshold: 0 } });
    try {
      assert.match(ws.socket.extensions, /permessage-deflate/);
      ws.send(ndjson("wsdeflate-", 100));
      const [ack] = await ws.waitForAcks(1);
      assert.equal(ack.accepted, 100, JSON.stringify(ack));
      assert.equal(await countIds("wsdeflate-"), 100);
    } finally {
      ws.socket.close();
    }
  });

  test("a compressed frame that inflates past the frame limit is not taken in", async () => {
    const ws = await openWs(`${fx.daemon.wsBase}/v1/ws?stream=events`, 5000, { perMessageDeflate: { threshold: 0 } });
    // Zeros compress ~1000:1: a small frame on the wire, 8 MiB inflated, over twice the 1 MiB frame limit.
    ws.send(Buffer.alloc(8 * 1024 * 1024, " "));
    const closed = await ws.closed;
    assert.ok(closed.code === 1009 || closed.code === 1006, `closed with ${closed.code} ${closed.reason}`);
  });

  test("a producer that does not ask gets no compression", async () => {
    const ws = await openWs(`${fx.daemon.wsBase}/v1/ws?stream=events`);
    try {
      assert.equal(ws.socket.extensions, "");
    } finally {
      ws.socket.close();
    }
  });
});
