/**
 * The TPC-H line streams (docs/streams.md; docs/http-api.md; issue 3): `orders`, `lineitem`, `customer`, `part` fed by pipe-delimited
 * lines through POST /ingest/message, /ingest/batch and /ingest/stream, against the real daemon and a real
 * PostgreSQL. Every answer is checked against the rows that really landed: each stored row is turned back
 * into its line by SQL and compared with the lines that should have been stored.
 */
import assert from "node:assert/strict";
import http from "node:http";
import { describe, test } from "node:test";
import { useDaemon } from "./fixture";
import { get, post } from "./harness";

const fx = useDaemon();

const EXAMPLE = "O|1|100|O|123.45|1996-01-02|5-LOW|Clerk#000000951|0|nstructions sleep furiously";

// ---------------------------------------------------------------------------------------------------------
// Line builders and the stored rows turned back into lines.

function orderLine(
  key: number,
  o: Partial<Record<"cust" | "status" | "price" | "date" | "prio" | "clerk" | "ship" | "comment", string | number>> = {},
): string {
  return [
    "O",
    key,
    o.cust ?? 7,
    o.status ?? "O",
    o.price ?? "1000.50",
    o.date ?? "1996-01-02",
    o.prio ?? "5-LOW",
    o.clerk ?? "Clerk#000000951",
    o.ship ?? 0,
    o.comment ?? "plain order",
  ].join("|");
}

type LineItemField =
  | "part"
  | "supp"
  | "qty"
  | "price"
  | "disc"
  | "tax"
  | "rf"
  | "ls"
  | "ship"
  | "commit"
  | "receipt"
  | "instr"
  | "mode"
  | "comment";
function lineItemLine(order: number, ln: number, l: Partial<Record<LineItemField, string | number>> = {}): string {
  return [
    "L",
    order,
    l.part ?? 11,
    l.supp ?? 3,
    ln,
    l.qty ?? "17.00",
    l.price ?? "21168.23",
    l.disc ?? "0.04",
    l.tax ?? "0.02",
    l.rf ?? "N",
    l.ls ?? "O",
    l.ship ?? "1996-03-13",
    l.commit ?? "1996-02-12",
    l.receipt ?? "1996-03-22",
    l.instr ?? "DELIVER IN PERSON",
    l.mode ?? "TRUCK",
    l.comment ?? "egular courts above the",
  ].join("|");
}

function customerLine(
  key: number,
  c: Partial<Record<"name" | "addr" | "nation" | "phone" | "bal" | "seg" | "comment", string | number>> = {},
): string {
  return [
    "C",
    key,
    c.name ?? `Customer#${key}`,
    c.addr ?? "IVhzIApeRb ot,c,E",
    c.nation ?? 15,
    c.phone ?? "25-989-741-2988",
    c.bal ?? "711.56",
    c.seg ?? "BUILDING",
    c.comment ?? "to the even, regular platelets",
  ].join("|");
}

function partLine(
  key: number,
  p: Partial<Record<"name" | "mfgr" | "brand" | "type" | "size" | "container" | "price" | "comment", string | number>> = {},
): string {
  return [
    "P",
    key,
    p.name ?? "goldenrod lavender spring",
    p.mfgr ?? "Manufacturer#1",
    p.brand ?? "Brand#13",
    p.type ?? "PROMO BURNISHED COPPER",
    p.size ?? 7,
    p.container ?? "JUMBO PKG",
    p.price ?? "901.00",
    p.comment ?? "ly. slyly ironi",
  ].join("|");
}

/** Every stored row of the four tables whose key lies in [from, to], as the line it came from. */
async function storedLines(from: number, to: number): Promise<Record<"O" | "L" | "C" | "P", string[]>> {
  const q = async (sql: string) => (await fx.db.query<{ line: string }>(sql, [from, to])).rows.map((r) => r.line).sort();
  return {
    O: await q(`SELECT concat_ws('|', 'O', o_orderkey, o_custkey, o_orderstatus, o_totalprice, o_orderdate, o_orderpriority, o_clerk, o_shippriority, o_comment) AS line
                  FROM orders WHERE o_orderkey BETWEEN $1 AND $2`),
    L: await q(`SELECT concat_ws('|', 'L', l_orderkey, l_partkey, l_suppkey, l_linenumber, l_quantity, l_extendedprice, l_discount, l_tax, l_returnflag, l_linestatus,
                         l_shipdate, l_commitdate, l_receiptdate, l_shipinstruct, l_shipmode, l_comment) AS line
                  FROM lineitem WHERE l_orderkey BETWEEN $1 AND $2`),
    C: await q(`SELECT concat_ws('|', 'C', c_custkey, c_name, c_address, c_nationkey, c_phone, c_acctbal, c_mktsegment, c_comment) AS line
                  FROM customer WHERE c_custkey BETWEEN $1 AND $2`),
    P: await q(`SELECT concat_ws('|', 'P', p_partkey, p_name, p_mfgr, p_brand, p_type, p_size, p_container, p_retailprice, p_comment) AS line
                  FROM part WHERE p_partkey BETWEEN $1 AND $2`),
  };
}

// ---------------------------------------------------------------------------------------------------------
// The 10,000-line mixed file and what must become of each of its lines.

type Outcome = "ok" | "invalid" | "db";
interface Expected {
  /** 1-based line number in the file. */
  line: number;
  text: string;
  entity: string;
  outcome: Outcome;
  /** invalid: the field the error must name ("$" for the line as a whole); db: a fragment of PostgreSQL's message. */
  detail?: string;
}

interface MixedFile {
  body: string;
  lines: Expected[];
  /** Non-blank lines: what `processed` / `total` count. */
  records: number;
  /** Keys of this file lie in [keyBase, keyBase + 999_999]. */
  keyBase: number;
}

/** Small deterministic PRNG (mulberry32): the same file on every run. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const ENTITY: Record<string, string> = { O: "Order", L: "LineItem", C: "Customer", P: "Part" };

/**
 * Orders each followed by their lineitems, customers and parts in between, and at fixed places: lineitems
 * whose order does not exist, lines that fail validation (each naming its field), values only PostgreSQL
 * refuses (February 30th, a duplicate key), an unknown prefix, blank lines, a CRLF line, dbgen's trailing `|`.
 */
function mixedFile(keyBase: number, total = 10_000): MixedFile {
  const rnd = prng(keyBase + 17);
  const cents = (max: number) => {
    const c = 1 + Math.floor(rnd() * max); // never 0: "-0.00" would come back as "0.00"
    return `${Math.floor(c / 100)}.${String(c % 100).padStart(2, "0")}`;
  };
  const day = () => {
    const d = new Date(Date.UTC(1992, 0, 1) + Math.floor(rnd() * 2400) * 86_400_000);
    return d.toISOString().slice(0, 10);
  };
  const out: Expected[] = [];
  const texts: string[] = [];
  const push = (text: string, outcome: Outcome, detail?: string, raw = text) => {
    texts.push(raw);
    out.push({ line: texts.length, text, entity: ENTITY[text[0]] ?? "Unknown", outcome, detail });
  };
  const blank = () => texts.push("");
  let order = keyBase;
  let cust = keyBase;
  let part = keyBase;
  let orphan = keyBase + 900_000;
  let n = 0;
  while (texts.length < total - 9) {
    n++;
    if (n % 9 === 0) push(customerLine(++cust, { bal: `-${cents(99_999)}`, nation: Math.floor(rnd() * 25) }) + "|", "ok"); // dbgen's trailing |
    if (n % 13 === 0) push(partLine(++part, { price: cents(200_000), size: 1 + Math.floor(rnd() * 50) }), "ok");
    // Injected faults, each kind a few times over the file.
    switch (n % 331) {
      case 10:
        push(lineItemLine(++orphan, 1), "db", "foreign key");
        continue;
      case 40:
        push(orderLine(++order, { price: "12x.45" }), "invalid", "o_totalprice");
        // Its lineitems now have no order: PostgreSQL refuses them, the others of the request stay.
        push(lineItemLine(order, 1), "db", "foreign key");
        push(lineItemLine(order, 2), "db", "foreign key");
        continue;
      case 70:
        push(orderLine(++order, { date: "1996-02-30" }), "db", "out of range");
        push(lineItemLine(order, 1), "db", "foreign key");
        continue;
      case 100:
        push(orderLine(order - 3), "db", "duplicate key");
        continue;
      case 130:
        push(`Z|${n}|not a TPC-H line`, "invalid", "$");
        continue;
      case 160:
        push(lineItemLine(order, 7, { ship: "1996-13-45" }), "invalid", "l_shipdate");
        continue;
      case 190:
        push(partLine(++part, { comment: "x".repeat(24) }), "invalid", "p_comment");
        continue;
      case 220:
        push(customerLine(++cust, { nation: -1 }), "invalid", "c_nationkey");
        continue;
      case 250:
        push(`O|${++order}|7|O|1.00|1996-01-02|5-LOW`, "invalid", "$"); // too few fields
        continue;
      case 280:
        push(lineItemLine(order, 8, { disc: "0.045" }), "invalid", "l_discount");
        continue;
      case 300:
        push(orderLine(++order, { cust: "abc" }), "invalid", "o_custkey");
        continue;
      case 320:
        blank();
        continue;
      case 330:
        push(orderLine(++order, { comment: "CRLF-terminated" }), "ok", undefined, orderLine(order, { comment: "CRLF-terminated" }) + "\r");
        continue;
    }
    const k = ++order;
    const special = n % 97 === 0 ? "tab\there, back\\slash, ünïcödé ✓" : `order ${n}`;
    push(
      orderLine(k, {
        cust: 1 + Math.floor(rnd() * 1500),
        price: cents(50_000_000),
        date: day(),
        ship: Math.floor(rnd() * 3),
        comment: special,
      }),
      "ok",
    );
    const items = 1 + Math.floor(rnd() * 4);
    for (let ln = 1; ln <= items; ln++) {
      push(
        lineItemLine(k, ln, {
          part: 1 + Math.floor(rnd() * 2000),
          qty: `${1 + Math.floor(rnd() * 50)}.00`,
          price: cents(10_000_000),
          disc: `0.0${Math.floor(rnd() * 10)}`,
          ship: day(),
        }),
        "ok",
      );
    }
  }
  // The tail: one more orphan, a blank line, and valid lines up to exactly `total`.
  push(lineItemLine(++orphan, 3), "db", "foreign key");
  blank();
  while (texts.length < total) push(customerLine(++cust), "ok");
  assert.equal(texts.length, total);
  return { body: texts.join("\n") + "\n", lines: out, records: out.length, keyBase };
}

/** What the stored lines must be, per prefix: the `ok` lines, without CR and dbgen's trailing `|`. */
function expectedStored(file: MixedFile): Record<"O" | "L" | "C" | "P", string[]> {
  const result: Record<"O" | "L" | "C" | "P", string[]> = { O: [], L: [], C: [], P: [] };
  for (const e of file.lines) if (e.outcome === "ok") result[e.text[0] as "O"].push(e.text.replace(/\|$/, ""));
  for (const k of Object.keys(result) as (keyof typeof result)[]) result[k].sort();
  return result;
}

function assertLineErrors(errors: any[], file: MixedFile): void {
  const failed = file.lines.filter((e) => e.outcome !== "ok");
  assert.deepEqual(
    errors.map((e) => `${e.line_number} ${e.entity}`),
    failed.map((e) => `${e.line} ${e.entity}`),
    "exactly the failed lines are reported, by line number and entity, in line order",
  );
  errors.forEach((err, i) => {
    const want = failed[i];
    assert.equal(err.line, want.text, `line ${want.line}: the error echoes the line`);
    assert.equal(typeof err.message, "string");
    if (want.outcome === "db") {
      assert.match(err.message, /rejected by the database/, `line ${want.line}: ${err.message}`);
      assert.ok(err.message.includes(want.detail!), `line ${want.line}: "${err.message}" mentions "${want.detail}"`);
    } else if (want.detail !== "$") {
      assert.ok(err.message.startsWith(`${want.detail}:`), `line ${want.line}: "${err.message}" names ${want.detail}`);
    }
  });
}

// ---------------------------------------------------------------------------------------------------------
// Server-sent events of /ingest/stream.

interface SseResult {
  status: number;
  contentType: string;
  events: { event?: string; data: any; at: number }[];
}

/**
 * POSTs `body` chunked (no Content-Length) in chunks of `chunk` bytes that cut lines anywhere. After
 * `holdAt` bytes it stops writing until the first progress event arrived: progress is sent per committed
 * segment while the upload is still going, not all at the end.
 */
function postStream(
  port: number,
  body: string,
  chunk: number,
  holdAt: number,
  timeoutMs = 60_000,
): Promise<SseResult & { heldForProgress: boolean }> {
  return new Promise((resolve, reject) => {
    const bytes = Buffer.from(body, "utf8");
    const events: SseResult["events"] = [];
    let heldForProgress = false;
    let onFirstEvent: (() => void) | null = null;
    const timer = setTimeout(() => {
      req.destroy();
      reject(
        new Error(
          `/ingest/stream did not finish within ${timeoutMs} ms; events so far: ${JSON.stringify(events.map((e) => e.data)).slice(0, 2000)}`,
        ),
      );
    }, timeoutMs);
    const req = http.request(
      { host: "127.0.0.1", port, method: "POST", path: "/ingest/stream", headers: { "content-type": "text/plain" } },
      (res) => {
        res.setEncoding("utf8");
        let buffered = "";
        res.on("data", (text: string) => {
          buffered += text;
          let cut: number;
          while ((cut = buffered.indexOf("\n\n")) !== -1) {
            const block = buffered.slice(0, cut);
            buffered = buffered.slice(cut + 2);
            let name: string | undefined;
            const data: string[] = [];
            for (const line of block.split("\n")) {
              if (line.startsWith("event:")) name = line.slice(6).trim();
              else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
            }
            if (data.length === 0) continue; // a comment
            events.push({ event: name, data: JSON.parse(data.join("\n")), at: Date.now() });
            onFirstEvent?.();
          }
        });
        res.on("end", () => {
          clearTimeout(timer);
          resolve({ status: res.statusCode ?? 0, contentType: String(res.headers["content-type"]), events, heldForProgress });
        });
        res.on("error", reject);
      },
    );
    req.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    void (async () => {
      let held = false;
      for (let off = 0; off < bytes.length; off += chunk) {
        if (off >= holdAt && !held) {
          held = true;
          if (events.length === 0) {
            await new Promise<void>((r) => {
              onFirstEvent = r;
              setTimeout(r, 20_000); // the assertion below tells whether it came
            });
          }
          onFirstEvent = null;
          heldForProgress = events.length > 0;
        }
        const piece = bytes.subarray(off, Math.min(off + chunk, bytes.length));
        if (!req.write(piece)) await new Promise((r) => req.once("drain", r));
      }
      req.end();
    })();
  });
}

// ---------------------------------------------------------------------------------------------------------

describe("POST /ingest/message: one line", () => {
  test("the docs/streams.md example → 200 {status: success, entity: Order, id: 1, timestamp}; the row holds every typed field", async () => {
    const before = Date.now();
    const res = await post(`${fx.daemon.base}/ingest/message`, EXAMPLE, "text/plain");
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(Object.keys(res.json).sort(), ["entity", "id", "status", "timestamp"]);
    assert.equal(res.json.status, "success");
    assert.equal(res.json.entity, "Order");
    assert.equal(res.json.id, 1);
    const ts = Date.parse(res.json.timestamp);
    assert.ok(ts >= before - 1000 && ts <= Date.now() + 1000, `timestamp ${res.json.timestamp} is now`);

    const { rows } = await fx.db.query(
      `SELECT o_orderkey, o_custkey, o_orderstatus, o_totalprice::text AS price, o_orderdate::text AS day, o_orderpriority, o_clerk,
              o_shippriority, o_comment, pg_typeof(o_orderkey)::text AS key_type, pg_typeof(o_totalprice)::text AS price_type,
              pg_typeof(o_orderdate)::text AS date_type, pg_typeof(o_shippriority)::text AS ship_type
         FROM orders WHERE o_orderkey = 1`,
    );
    assert.deepEqual(rows, [
      {
        o_orderkey: "1",
        o_custkey: "100",
        o_orderstatus: "O",
        price: "123.45",
        day: "1996-01-02",
        o_orderpriority: "5-LOW",
        o_clerk: "Clerk#000000951",
        o_shippriority: 0,
        o_comment: "nstructions sleep furiously",
        key_type: "bigint",
        price_type: "numeric",
        date_type: "date",
        ship_type: "integer",
      },
    ]);
  });

  test("each entity by its prefix: LineItem, Customer and Part lines → 200 naming the entity and its key", async () => {
    const cases: [string, string, unknown][] = [
      [lineItemLine(1, 1, { qty: "36.00", price: "99999999999.99", disc: "0.10" }), "LineItem", "1-1"],
      [customerLine(100, { bal: "-986.96" }), "Customer", 100],
      [partLine(200, { price: "2098.99" }), "Part", 200],
    ];
    for (const [line, entity, id] of cases) {
      const res = await post(`${fx.daemon.base}/ingest/message`, line, "text/plain");
      assert.equal(res.status, 200, `${line}: ${res.text}`);
      assert.equal(res.json.entity, entity);
      assert.deepEqual(res.json.id, id);
    }
    const li = await fx.db.query(
      `SELECT l_quantity::text AS q, l_extendedprice::text AS p, l_discount::text AS d, l_shipdate::text AS s FROM lineitem WHERE l_orderkey = 1 AND l_linenumber = 1`,
    );
    assert.deepEqual(li.rows, [{ q: "36.00", p: "99999999999.99", d: "0.10", s: "1996-03-13" }], "decimals are exact, not floats");
    const c = await fx.db.query(`SELECT c_acctbal::text AS bal, c_nationkey FROM customer WHERE c_custkey = 100`);
    assert.deepEqual(c.rows, [{ bal: "-986.96", c_nationkey: 15 }]);
    const p = await fx.db.query(`SELECT p_retailprice::text AS price, p_size FROM part WHERE p_partkey = 200`);
    assert.deepEqual(p.rows, [{ price: "2098.99", p_size: 7 }]);
  });

  test("a bad line → 400 {status: error, message naming the field, entity, line}; nothing stored", async () => {
    const line = orderLine(2, { price: "12x.45" });
    const res = await post(`${fx.daemon.base}/ingest/message`, line, "text/plain");
    assert.equal(res.status, 400, res.text);
    assert.deepEqual(Object.keys(res.json).sort(), ["entity", "line", "message", "status"]);
    assert.equal(res.json.status, "error");
    assert.equal(res.json.entity, "Order");
    assert.equal(res.json.line, line);
    assert.match(res.json.message, /^o_totalprice: /);
    assert.equal((await fx.db.query("SELECT count(*)::int AS n FROM orders WHERE o_orderkey = 2")).rows[0].n, 0);
  });

  test("a lineitem whose order does not exist → 400 with PostgreSQL's foreign-key message", async () => {
    const line = lineItemLine(424242, 1);
    const res = await post(`${fx.daemon.base}/ingest/message`, line, "text/plain");
    assert.equal(res.status, 400, res.text);
    assert.equal(res.json.entity, "LineItem");
    assert.match(res.json.message, /rejected by the database: .*foreign key/);
    assert.equal(res.json.line, line);
    assert.equal((await fx.db.query("SELECT count(*)::int AS n FROM lineitem WHERE l_orderkey = 424242")).rows[0].n, 0);
  });

  test("an unknown prefix → 400 naming the accepted prefixes", async () => {
    const res = await post(`${fx.daemon.base}/ingest/message`, "X|1|2|3", "text/plain");
    assert.equal(res.status, 400, res.text);
    assert.equal(res.json.status, "error");
    assert.match(res.json.message, /O\|/);
    assert.equal(res.json.line, "X|1|2|3");
  });
});

describe("the canonical route of a line stream: POST /v1/streams/orders/events (text/plain)", () => {
  test("order lines → 200 in the canonical shape with line numbers on errors; a line of another entity is refused; JSON is 415", async () => {
    const lines = [orderLine(6001), lineItemLine(6001, 1), orderLine(6002, { date: "1996-1-2" }), orderLine(6003)];
    const res = await post(`${fx.daemon.base}/v1/streams/orders/events`, lines.join("\n"), "text/plain");
    assert.equal(res.status, 207, res.text);
    assert.equal(res.json.stream, "orders");
    assert.deepEqual([res.json.accepted, res.json.rejected, res.json.duplicates], [2, 2, 0]);
    assert.deepEqual(
      res.json.errors.map((e: any) => [e.index, e.line, e.path]),
      [
        [1, 2, "$"],
        [2, 3, "o_orderdate"],
      ],
    );
    assert.deepEqual((await storedLines(6000, 6999)).O, [orderLine(6001), orderLine(6003)]);
    const json = await post(`${fx.daemon.base}/v1/streams/orders/events`, JSON.stringify({ o_orderkey: 6004 }));
    assert.equal(json.status, 415, json.text);
  });
});

describe("TPC-H field validation: each kind of invalid value names its field", () => {
  // [line, entity, field the error names]
  const cases: [string, string, string][] = [
    [orderLine(3001, { price: "1.234" }), "Order", "o_totalprice"], // three decimals
    [orderLine(3002, { price: "12345678901234.00" }), "Order", "o_totalprice"], // 14 integer digits
    [orderLine(3003, { date: "1996/01/02" }), "Order", "o_orderdate"],
    [orderLine(3004, { status: "" }), "Order", "o_orderstatus"], // MinLength<1>
    [orderLine(3005, { status: "OF" }), "Order", "o_orderstatus"], // MaxLength<1>
    [orderLine(3006, { comment: "c".repeat(80) }), "Order", "o_comment"],
    [orderLine(3007, { ship: 2 ** 31 }), "Order", "o_shippriority"], // int32
    [orderLine(3008, { cust: "1.5" }), "Order", "o_custkey"], // not an integer
    [orderLine(0), "Order", "o_orderkey"], // Minimum<1>
    [lineItemLine(3009, 0), "LineItem", "l_linenumber"], // Minimum<1>
    [lineItemLine(3010, 1, { receipt: "yesterday" }), "LineItem", "l_receiptdate"],
    [lineItemLine(3011, 1, { mode: "x".repeat(11) }), "LineItem", "l_shipmode"],
    [lineItemLine(3012, 1, { tax: "" }), "LineItem", "l_tax"],
    [customerLine(3013, { nation: -1 }), "Customer", "c_nationkey"],
    [customerLine(3014, { phone: "1".repeat(16) }), "Customer", "c_phone"],
    [customerLine(3015, { bal: "1e3" }), "Customer", "c_acctbal"],
    [partLine(3016, { size: "seven" }), "Part", "p_size"],
    [partLine(3017, { brand: "Brand#1234567" }), "Part", "p_brand"],
  ];

  test("every case in one /ingest/batch → 422, one error per line naming the field; dead letters hold them", async () => {
    const body = cases.map((c) => c[0]).join("\n");
    const res = await post(`${fx.daemon.base}/ingest/batch`, body, "text/plain");
    assert.equal(res.status, 422, res.text);
    assert.equal(res.json.processed, cases.length);
    assert.equal(res.json.inserted, 0);
    assert.equal(res.json.failed, cases.length);
    assert.deepEqual(
      res.json.errors.map((e: any) => e.line_number),
      cases.map((_, i) => i + 1),
      "one error per line, in order",
    );
    res.json.errors.forEach((e: any, i: number) => {
      const [line, entity, field] = cases[i];
      assert.equal(e.entity, entity, line);
      assert.equal(e.line, line);
      assert.ok(e.message.startsWith(`${field}: `), `line ${i + 1} (${line}): "${e.message}" names ${field}`);
    });
    const stored =
      await fx.db.query(`SELECT (SELECT count(*) FROM orders WHERE o_orderkey BETWEEN 3000 AND 3100) + (SELECT count(*) FROM lineitem WHERE l_orderkey BETWEEN 3000 AND 3100)
                                        + (SELECT count(*) FROM customer WHERE c_custkey BETWEEN 3000 AND 3100) + (SELECT count(*) FROM part WHERE p_partkey BETWEEN 3000 AND 3100) AS n`);
    assert.equal(Number(stored.rows[0].n), 0, "nothing stored");

    const dead = await fx.db.query(
      `SELECT stream, source, line, record_index, raw, errors FROM ingest_dead_letters WHERE raw = ANY($1) ORDER BY line`,
      [cases.map((c) => c[0])],
    );
    assert.equal(dead.rows.length, cases.length, "one dead letter per rejected line");
    dead.rows.forEach((d, i) => {
      const [line, , field] = cases[i];
      const stream = { O: "orders", L: "lineitem", C: "customer", P: "part" }[line[0]]!;
      assert.equal(d.stream, stream, `dead letter of ${line} is filed under its stream`);
      assert.equal(d.source, "http");
      assert.equal(d.line, i + 1);
      assert.equal(d.record_index, i);
      assert.equal(d.raw, line);
      assert.ok(Array.isArray(d.errors) && d.errors.length >= 1);
      assert.equal(d.errors[0].path, field);
    });
  });

  test("values only PostgreSQL refuses (February 30th, a duplicate key) are isolated; the rest of the request is stored", async () => {
    const lines = [
      orderLine(3101),
      orderLine(3102, { date: "1996-02-30" }),
      lineItemLine(3101, 1),
      lineItemLine(3101, 1, { comment: "same key twice" }),
      lineItemLine(3101, 2, { ship: "1995-02-29" }),
      lineItemLine(3102, 1),
      customerLine(3103),
      orderLine(3101, { comment: "duplicate order" }),
    ];
    const res = await post(`${fx.daemon.base}/ingest/batch`, lines.join("\n"), "text/plain");
    assert.equal(res.status, 207, res.text);
    assert.equal(res.json.status, "partial");
    assert.equal(res.json.processed, 8);
    assert.equal(res.json.inserted, 3);
    assert.equal(res.json.failed, 5);
    assert.deepEqual(
      res.json.errors.map((e: any) => [e.line_number, e.entity]),
      [
        [2, "Order"],
        [4, "LineItem"],
        [5, "LineItem"],
        [6, "LineItem"],
        [8, "Order"],
      ],
    );
    const msg = (n: number) => res.json.errors.find((e: any) => e.line_number === n).message;
    assert.match(msg(2), /rejected by the database: .*out of range/);
    assert.match(msg(4), /rejected by the database: duplicate key/);
    assert.match(msg(5), /rejected by the database: .*out of range/);
    assert.match(msg(6), /rejected by the database: .*foreign key/);
    assert.match(msg(8), /rejected by the database: duplicate key/);
    const stored = await storedLines(3100, 3199);
    assert.deepEqual(stored, { O: [orderLine(3101)], L: [lineItemLine(3101, 1)], C: [customerLine(3103)], P: [] });
  });
});

describe("one group commit shared by several requests", () => {
  test("lines PostgreSQL refuses in one request cost nothing to the other requests committed in the same transaction", async () => {
    // One worker and a long batch age: requests sent together share one transaction.
    const gc = await fx.startDaemon({ env: { WORKERS: "1", BATCH_TIMEOUT_MS: "1500", BATCH_SIZE: "100000" } });
    try {
      const a = [orderLine(4001), lineItemLine(4001, 1), lineItemLine(4999, 1), orderLine(4002, { date: "1996-02-30" })];
      const b = [orderLine(4003), lineItemLine(4003, 1), lineItemLine(4001, 2), customerLine(4004)];
      const [ra, rb, rc] = await Promise.all([
        post(`${gc.base}/ingest/batch`, a.join("\n"), "text/plain"),
        post(`${gc.base}/ingest/batch`, b.join("\n"), "text/plain"),
        post(
          `${gc.base}/v1/streams/events/events`,
          JSON.stringify([{ event_id: "gc-tpch-1", service_name: "s", event_type: "t", payload: {} }]),
        ),
      ]);
      assert.equal(ra.status, 207, ra.text);
      assert.deepEqual([ra.json.inserted, ra.json.failed], [2, 2]);
      assert.deepEqual(
        ra.json.errors.map((e: any) => e.line_number),
        [3, 4],
      );
      assert.equal(rb.status, 200, rb.text);
      assert.equal(rb.json.inserted, 4, "b's lineitem of a's order 4001 is stored too: same transaction, orders first");
      assert.equal(rc.status, 200, rc.text);
      const stored = await storedLines(4000, 4999);
      assert.deepEqual(stored, {
        O: [orderLine(4001), orderLine(4003)].sort(),
        L: [lineItemLine(4001, 1), lineItemLine(4001, 2), lineItemLine(4003, 1)].sort(),
        C: [customerLine(4004)],
        P: [],
      });
      const txns = await fx.db.query(
        `SELECT count(DISTINCT t)::int AS n FROM (
           SELECT ingested_at AS t FROM orders WHERE o_orderkey BETWEEN 4000 AND 4999
           UNION ALL SELECT ingested_at FROM lineitem WHERE l_orderkey BETWEEN 4000 AND 4999
           UNION ALL SELECT ingested_at FROM customer WHERE c_custkey BETWEEN 4000 AND 4999
           UNION ALL SELECT ingested_at FROM events WHERE event_id = 'gc-tpch-1') x`,
      );
      assert.equal(txns.rows[0].n, 1, "the three requests were committed in one transaction");
    } finally {
      await gc.stop();
    }
  });
});

describe("a 10,000-line mixed TPC-H file", () => {
  test("POST /ingest/batch → 207 with exact counts and per-line errors; the stored rows are exactly the good lines", async () => {
    const file = mixedFile(1_000_000);
    const failed = file.lines.filter((e) => e.outcome !== "ok");
    assert.ok(failed.length >= 50 && failed.length < 200, `the file has ${failed.length} bad lines`);
    assert.ok(file.lines.filter((e) => e.outcome === "db" && e.detail === "foreign key").length >= 30, "orphans");

    const res = await post(`${fx.daemon.base}/ingest/batch`, file.body, "text/plain");
    assert.equal(res.status, 207, res.text.slice(0, 2000));
    assert.deepEqual(Object.keys(res.json).sort(), ["duration_ms", "errors", "failed", "inserted", "processed", "status"]);
    assert.equal(res.json.status, "partial");
    assert.equal(res.json.processed, file.records);
    assert.equal(res.json.inserted, file.records - failed.length);
    assert.equal(res.json.failed, failed.length);
    assert.equal(typeof res.json.duration_ms, "number");
    assertLineErrors(res.json.errors, file);

    assert.deepEqual(await storedLines(file.keyBase, file.keyBase + 999_999), expectedStored(file));
    const dead = await fx.db.query(
      `SELECT line, raw FROM ingest_dead_letters WHERE source = 'http' AND line IS NOT NULL AND raw = ANY($1) ORDER BY line`,
      [failed.map((e) => e.text)],
    );
    assert.deepEqual(
      dead.rows.map((d) => d.line),
      failed.map((e) => e.line),
      "a dead letter per failed line, with its line number",
    );
  });

  test("POST /ingest/stream (chunked) → text/event-stream: progress per committed segment while uploading, a final summary, exact per-line errors", async () => {
    const file = mixedFile(2_000_000);
    const failed = file.lines.filter((e) => e.outcome !== "ok");
    const statsBefore = (await get(`${fx.daemon.base}/stats`)).json;
    // Chunks of a prime size cut lines (and multi-byte characters) anywhere.
    const result = await postStream(fx.daemon.port, file.body, 7919, 700_000);
    assert.equal(result.status, 200);
    assert.match(result.contentType, /^text\/event-stream/);
    assert.ok(result.heldForProgress, "a progress event arrived while the upload was still going");

    const final = result.events[result.events.length - 1];
    assert.equal(final.event, undefined, JSON.stringify(result.events.filter((e) => e.event)));
    assert.deepEqual(Object.keys(final.data).sort(), ["duration_ms", "failed", "inserted", "total"]);
    assert.equal(final.data.total, file.records);
    assert.equal(final.data.failed, failed.length);
    assert.equal(final.data.inserted, file.records - failed.length);
    assert.equal(typeof final.data.duration_ms, "number");

    const progress = result.events.slice(0, -1);
    // Segments are cut at about 256 KiB, or at what arrived meanwhile while one commits; the upload was
    // held until the first progress event, so there are at least two.
    assert.ok(progress.length >= 2, `one progress event per committed segment, got ${progress.length}`);
    let total = 0;
    for (const p of progress) {
      total += p.data.processed;
      assert.equal(p.data.total, total, "progress carries the running total");
    }
    assert.equal(total, file.records);
    assert.equal(
      progress.reduce((n, p) => n + p.data.inserted, 0),
      final.data.inserted,
    );
    assertLineErrors(
      progress.flatMap((p) => p.data.errors),
      file,
    );

    assert.deepEqual(await storedLines(file.keyBase, file.keyBase + 999_999), expectedStored(file));
    const dead = await fx.db.query(`SELECT count(*)::int AS n FROM ingest_dead_letters WHERE source = 'http /ingest/stream'`);
    assert.equal(dead.rows[0].n, failed.length, "a dead letter per failed line");

    const statsAfter = (await get(`${fx.daemon.base}/stats`)).json;
    assert.equal(
      statsAfter.total_messages_processed - statsBefore.total_messages_processed,
      final.data.inserted,
      "GET /stats counts the streamed lines",
    );
    assert.equal(statsAfter.errors - statsBefore.errors, final.data.failed);
  });

  test("GET /stats counts the TPC-H lines of /ingest/batch", async () => {
    const before = (await get(`${fx.daemon.base}/stats`)).json;
    const res = await post(
      `${fx.daemon.base}/ingest/batch`,
      [orderLine(5001), lineItemLine(5001, 1), lineItemLine(5999, 1)].join("\n"),
      "text/plain",
    );
    assert.equal(res.status, 207, res.text);
    const after = await get(`${fx.daemon.base}/stats`);
    assert.equal(after.status, 200, after.text);
    assert.equal(after.json.total_messages_processed - before.total_messages_processed, 2);
    assert.equal(after.json.errors - before.errors, 1);
    assert.equal(typeof after.json.messages_by_entity, "object");
  });
});
