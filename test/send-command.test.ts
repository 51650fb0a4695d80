/**
 * `ingestd send` against the real daemon and PostgreSQL: a mixed TPC-H file (orders, each followed by its
 * line items, customers and parts) sent over a producer session while the daemon is SIGKILLed and
 * restarted; exact row counts and sums, the summary line and the exit status. Then a file with a bad line
 * (exit 1, the line listed on stderr) and a daemon that is not there (exit 2).
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, test } from "node:test";
import { useTestDb } from "./fixture";
import { CLI, type Daemon } from "./harness";
import { startProxy, type TcpProxy } from "./tcp-proxy";

let daemon: Daemon;
let proxy: TcpProxy;
let dir: string;

function orderLine(key: number, cents: number): string {
  return ["O", key, 7, "O", (cents / 100).toFixed(2), "1996-01-02", "5-LOW", "Clerk#000000951", 0, "plain order"].join("|");
}

function lineItemLine(order: number, ln: number, qty: number): string {
  return [
    "L",
    order,
    11,
    3,
    ln,
    `${qty}.00`,
    "21168.23",
    "0.04",
    "0.02",
    "N",
    "O",
    "1996-03-13",
    "1996-02-12",
    "1996-03-22",
    "DELIVER IN PERSON",
    "TRUCK",
    "egular courts",
  ].join("|");
}

function customerLine(key: number): string {
  return ["C", key, `Customer#${key}`, "IVhzIApeRb ot,c,E", 15, "25-989-741-2988", "711.56", "BUILDING", "regular platelets"].join("|");
}

function partLine(key: number): string {
  return [
    "P",
    key,
    "goldenrod lavender",
    "Manufacturer#1",
    "Brand#13",
    "PROMO BURNISHED COPPER",
    7,
    "JUMBO PKG",
    "901.00",
    "ly. slyly",
  ].join("|");
}

interface TpchFile {
  file: string;
  lines: number;
  orders: number;
  lineItems: number;
  priceCents: number;
  quantity: number;
}

/** Orders from `base`, each followed by 1..4 line items; a customer and a part every 100 orders. */
function tpchFile(name: string, base: number, orders: number, bad: string | null = null): TpchFile {
  const out: string[] = [];
  let lineItems = 0;
  let priceCents = 0;
  let quantity = 0;
  for (let o = 0; o < orders; o++) {
    const key = base + o;
    const cents = 1000 + ((o * 7919) % 100_000);
    out.push(orderLine(key, cents));
    priceCents += cents;
    for (let ln = 1; ln <= 1 + (o % 4); ln++) {
      const qty = 1 + ((o + ln) % 50);
      out.push(lineItemLine(key, ln, qty));
      lineItems++;
      quantity += qty;
    }
    if (o % 100 === 0) out.push(customerLine(key), partLine(key));
    if (bad !== null && o === Math.floor(orders / 2)) out.push(bad);
  }
  const file = path.join(dir, name);
  fs.writeFileSync(file, `${out.join("\n")}\n`);
  return { file, lines: out.length, orders, lineItems, priceCents, quantity };
}

function send(args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, "send", ...args], { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.on("exit", (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

/** A database, a daemon on it behind a TCP proxy; restarted daemons come from fx too. */
const fx = useTestDb();
fx.setup(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "ingestd-send-"));
  daemon = await fx.startDaemon({ env: { WS_WINDOW: "8" } });
  proxy = await startProxy(daemon.port);
});
fx.teardown(async () => {
  await proxy?.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe("ingestd send", () => {
  test("a TPC-H file through a daemon restart: exact counts and sums, summary, exit 0", async () => {
    const f = tpchFile("mixed.tbl", 1_000_000, 12_000);
    let finished = false;
    const running = send(["--url", `ws://127.0.0.1:${proxy.port}`, "--stream", "tpch", f.file]).finally(() => (finished = true));
    await new Promise((r) => setTimeout(r, 400));
    assert.equal(finished, false, "send finished before the daemon was killed");
    await daemon.kill("SIGKILL");
    daemon = await fx.startDaemon({ env: { WS_WINDOW: "8" } });
    proxy.target = daemon.port;
    const result = await running;
    assert.equal(result.status, 0, result.stderr);
    assert.match(result.stderr, /connection lost/);
    const summary = JSON.parse(result.stdout.trim());
    assert.deepEqual({ ...summary, seconds: 0 }, { sent: f.lines, accepted: f.lines, rejected: 0, duplicates: 0, seconds: 0 });
    assert.equal(typeof summary.seconds, "number");
    const o = await fx.db.query(
      "SELECT count(*)::int AS n, (sum(o_totalprice) * 100)::bigint AS cents FROM orders WHERE o_orderkey >= 1000000 AND o_orderkey < 2000000",
    );
    assert.deepEqual(o.rows[0], { n: f.orders, cents: String(f.priceCents) });
    const l = await fx.db.query(
      "SELECT count(*)::int AS n, sum(l_quantity)::bigint AS q FROM lineitem WHERE l_orderkey >= 1000000 AND l_orderkey < 2000000",
    );
    assert.deepEqual(l.rows[0], { n: f.lineItems, q: String(f.quantity) });
    const cp = await fx.db.query(
      "SELECT (SELECT count(*) FROM customer WHERE c_custkey >= 1000000)::int AS c, (SELECT count(*) FROM part WHERE p_partkey >= 1000000)::int AS p",
    );
    assert.deepEqual(cp.rows[0], { c: f.orders / 100, p: f.orders / 100 });
  });

  test("a rejected line: exit 1, listed on stderr by line number, the rest stored", async () => {
    const f = tpchFile("bad.tbl", 3_000_000, 200, "O|3999999|7|O|not-a-price|1996-01-02|5-LOW|Clerk#1|0|x");
    const result = await send(["--url", `ws://127.0.0.1:${proxy.port}`, "--stream", "tpch", f.file]);
    assert.equal(result.status, 1, result.stderr);
    const summary = JSON.parse(result.stdout.trim());
    assert.equal(summary.sent, f.lines);
    assert.equal(summary.rejected, 1);
    assert.equal(summary.accepted, f.lines - 1);
    const badLine = fs.readFileSync(f.file, "utf8").split("\n").indexOf("O|3999999|7|O|not-a-price|1996-01-02|5-LOW|Clerk#1|0|x") + 1;
    assert.match(result.stderr, new RegExp(`line ${badLine}: rejected: .*o_totalprice`));
    const o = await fx.db.query("SELECT count(*)::int AS n FROM orders WHERE o_orderkey >= 3000000 AND o_orderkey < 4000000");
    assert.equal(o.rows[0].n, 200);
  });

  test("no daemon to deliver to: exit 2 with the reason", async () => {
    const f = tpchFile("none.tbl", 5_000_000, 5);
    const closed = await startProxy(1); // forwards to a port nothing listens on
    const result = await send(["--url", `ws://127.0.0.1:${closed.port}`, "--stream", "tpch", "--give-up-after", "1", f.file]);
    await closed.close();
    assert.equal(result.status, 2, result.stderr);
    assert.match(result.stderr, /could not deliver/);
    assert.equal(JSON.parse(result.stdout.trim()).accepted, 0);
  });
});
