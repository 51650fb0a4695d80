/**
 * Seed 004's clients against the real daemon and a real PostgreSQL (docs/http-api.md#tpc-h-lines): the
 * answers of /ingest/message, /ingest/batch and /ingest/stream?progress=line compared field by field with the
 * seed's examples, the entity names `Order`, `OrderLineItem`, `Customer`, `Product` everywhere (answers,
 * errors, /health, /stats), `#` comment lines and blank lines skipped, and real dbgen output loading as is.
 */
import assert from "node:assert/strict";
import http from "node:http";
import { describe, test } from "node:test";
import { useDaemon } from "./fixture";
import { get, post } from "./harness";

/** A database, and a daemon with the shipped configuration. */
const fx = useDaemon();

const ENTITIES = ["Order", "OrderLineItem", "Customer", "Product"];

// The first line of each table as TPC-H's dbgen writes it (scale factor 1), trailing `|` included.
const DBGEN = {
  orders: "1|36901|O|173665.47|1996-01-02|5-LOW|Clerk#000000951|0|nstructions sleep furiously among |",
  lineitem: "1|155190|7706|1|17|21168.23|0.04|0.02|N|O|1996-03-13|1996-02-12|1996-03-22|DELIVER IN PERSON|TRUCK|egular courts above the|",
  customer:
    "1|Customer#000000001|IVhzIApeRb ot,c,E|15|25-989-741-2988|711.56|BUILDING|to the even, regular platelets. regular, ironic epitaphs nag e|",
  part: "1|goldenrod lavender spring chocolate lace|Manufacturer#1|Brand#13|PROMO BURNISHED COPPER|7|JUMBO PKG|901.00|ly. slyly ironi|",
};

/** A dbgen line of table `t` with its key (and its order's key for a line item) replaced, prefixed for the router. */
function routed(prefix: "O" | "L" | "C" | "P", key: number, lineNumber = 1): string {
  const table = { O: DBGEN.orders, L: DBGEN.lineitem, C: DBGEN.customer, P: DBGEN.part }[prefix];
  const fields = table.split("|");
  fields[0] = String(key);
  if (prefix === "L") fields[3] = String(lineNumber);
  return `${prefix}|${fields.join("|")}`;
}

async function stats(): Promise<Record<string, number>> {
  const res = await get(`${fx.daemon.base}/stats`);
  assert.equal(res.status, 200, res.text);
  return res.json.messages_by_entity;
}

function delta(before: Record<string, number>, after: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const k of Object.keys(after)) if ((after[k] ?? 0) !== (before[k] ?? 0)) out[k] = after[k] - (before[k] ?? 0);
  return out;
}

/** POSTs `body` chunked to /ingest/stream`query` and collects its server-sent events (bounded by `timeoutMs`). */
function streamEvents(
  body: string,
  query: string,
  timeoutMs = 60_000,
): Promise<{ status: number; events: { event?: string; data: any }[] }> {
  return new Promise((resolve, reject) => {
    const events: { event?: string; data: any }[] = [];
    const req = http.request(
      {
        host: "127.0.0.1",
        port: fx.daemon.port,
        method: "POST",
        path: `/ingest/stream${query}`,
        headers: { "content-type": "text/plain" },
      },
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
            let data: string | undefined;
            for (const line of block.split("\n")) {
              if (line.startsWith("event:")) name = line.slice(6).trim();
              else if (line.startsWith("data:")) data = line.slice(5).trimStart();
            }
            if (data !== undefined) events.push({ event: name, data: JSON.parse(data) });
          }
        });
        res.on("end", () => {
          clearTimeout(timer);
          resolve({ status: res.statusCode ?? 0, events });
        });
      },
    );
    const timer = setTimeout(() => {
      req.destroy();
      reject(new Error(`/ingest/stream did not finish within ${timeoutMs} ms (${events.length} events)`));
    }, timeoutMs);
    req.on("error", reject);
    const bytes = Buffer.from(body);
    for (let off = 0; off < bytes.length; off += 65_536) req.write(bytes.subarray(off, off + 65_536));
    req.end();
  });
}

describe("/health", () => {
  test("lists the entities seed 004's clients know, beside the streams", async () => {
    const res = await get(`${fx.daemon.base}/health`);
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(res.json.entities, ENTITIES);
    assert.ok(res.json.streams.includes("lineitem"), "streams still name the streams");
  });
});

describe("POST /ingest/message", () => {
  test("the seed's example answer, field by field, for each entity; /stats counts each under its entity", async () => {
    const before = await stats();
    const cases: [string, string, unknown][] = [
      [routed("O", 1), "Order", 1],
      [routed("L", 1, 1), "OrderLineItem", "1-1"],
      [routed("C", 1), "Customer", 1],
      [routed("P", 1), "Product", 1],
    ];
    for (const [line, entity, id] of cases) {
      const res = await post(`${fx.daemon.base}/ingest/message`, line, "text/plain");
      assert.equal(res.status, 200, `${line}: ${res.text}`);
      assert.deepEqual(Object.keys(res.json), ["status", "entity", "id", "timestamp"], "the seed's fields, in its order");
      assert.equal(res.json.status, "success");
      assert.equal(res.json.entity, entity);
      assert.deepEqual(res.json.id, id);
      assert.ok(!Number.isNaN(Date.parse(res.json.timestamp)), res.json.timestamp);
    }
    assert.deepEqual(delta(before, await stats()), { Order: 1, OrderLineItem: 1, Customer: 1, Product: 1 });
  });

  test("a refused line: 400 {status, message, entity, line} naming OrderLineItem; not counted in messages_by_entity", async () => {
    const before = await stats();
    const line = routed("L", 999_999, 1); // its order does not exist
    const res = await post(`${fx.daemon.base}/ingest/message`, line, "text/plain");
    assert.equal(res.status, 400, res.text);
    assert.deepEqual(Object.keys(res.json).sort(), ["entity", "line", "message", "status"]);
    assert.equal(res.json.status, "error");
    assert.equal(res.json.entity, "OrderLineItem");
    assert.equal(res.json.line, line);
    assert.match(res.json.message, /foreign key/);
    assert.deepEqual(delta(before, await stats()), {});
  });
});

describe("POST /ingest/batch", () => {
  test("`#` comments and blank lines are skipped, line numbers count every physical line; the seed's answer field by field", async () => {
    const before = await stats();
    const lines = [
      "# orders.tbl, scale factor 0.001",
      routed("O", 10),
      "",
      "   ",
      routed("L", 10, 1),
      "  # an indented comment",
      routed("P", 10).replace("|7|", "|seven|"), // line 7: p_size is not an integer
      routed("C", 10),
      routed("L", 424_242, 1), // line 9: no such order
      "#",
    ];
    const res = await post(`${fx.daemon.base}/ingest/batch`, lines.join("\n") + "\n", "text/plain");
    assert.equal(res.status, 207, res.text);
    assert.deepEqual(Object.keys(res.json), ["status", "processed", "inserted", "failed", "errors", "duration_ms"]);
    assert.equal(res.json.status, "partial");
    assert.equal(res.json.processed, 5, "comments and blank lines are not records");
    assert.equal(res.json.inserted, 3);
    assert.equal(res.json.failed, 2, "comments and blank lines are not errors");
    assert.equal(typeof res.json.duration_ms, "number");
    assert.equal(res.json.errors.length, 2);
    for (const e of res.json.errors) assert.deepEqual(Object.keys(e), ["line_number", "entity", "message", "line"]);
    assert.deepEqual(
      res.json.errors.map((e: any) => [e.line_number, e.entity, e.line]),
      [
        [7, "Product", lines[6]],
        [9, "OrderLineItem", lines[8]],
      ],
    );
    assert.match(res.json.errors[0].message, /^p_size: /);
    assert.match(res.json.errors[1].message, /foreign key/);
    assert.deepEqual(delta(before, await stats()), { Order: 1, OrderLineItem: 1, Customer: 1 });
    const dead = await fx.db.query(`SELECT line FROM ingest_dead_letters WHERE raw = ANY($1) ORDER BY line`, [[lines[6], lines[8]]]);
    assert.deepEqual(
      dead.rows.map((r) => r.line),
      [7, 9],
    );
    const comments = await fx.db.query(`SELECT count(*)::int AS n FROM ingest_dead_letters WHERE raw ~ '^\\s*#'`);
    assert.equal(comments.rows[0].n, 0, "no dead letter for a comment");
  });

  test("only comments → 400, nothing processed", async () => {
    const res = await post(`${fx.daemon.base}/ingest/batch`, "# nothing here\n\n# still nothing\n", "text/plain");
    assert.equal(res.status, 400, res.text);
    assert.equal(res.json.status, "error");
  });
});

describe("dbgen output", () => {
  test("each table's .tbl lines load as they are through the table's own stream, trailing `|` included", async () => {
    const tables: [string, string, string][] = [
      [
        "orders",
        DBGEN.orders,
        "SELECT concat_ws('|', o_orderkey, o_custkey, o_orderstatus, o_totalprice, o_orderdate, o_orderpriority, o_clerk, o_shippriority, o_comment) || '|' AS line FROM orders WHERE o_orderkey = 500001",
      ],
      [
        "customer",
        DBGEN.customer,
        "SELECT concat_ws('|', c_custkey, c_name, c_address, c_nationkey, c_phone, c_acctbal, c_mktsegment, c_comment) || '|' AS line FROM customer WHERE c_custkey = 500001",
      ],
      [
        "part",
        DBGEN.part,
        "SELECT concat_ws('|', p_partkey, p_name, p_mfgr, p_brand, p_type, p_size, p_container, p_retailprice, p_comment) || '|' AS line FROM part WHERE p_partkey = 500001",
      ],
      [
        "lineitem",
        DBGEN.lineitem,
        `SELECT concat_ws('|', l_orderkey, l_partkey, l_suppkey, l_linenumber, l_quantity, l_extendedprice, l_discount, l_tax, l_returnflag, l_linestatus,
                l_shipdate, l_commitdate, l_receiptdate, l_shipinstruct, l_shipmode, l_comment) || '|' AS line FROM lineitem WHERE l_orderkey = 500001`,
      ],
    ];
    for (const [stream, tbl, sql] of tables) {
      const line = tbl.replace(/^1\|/, "500001|");
      const res = await post(`${fx.daemon.base}/v1/streams/${stream}/events`, `${line}\n`, "text/plain");
      assert.equal(res.status, 200, `${stream}: ${res.text}`);
      assert.equal(res.json.accepted, 1);
      const stored = await fx.db.query(sql);
      // l_quantity is dbgen's "17", stored as numeric 17 (no scale added)
      assert.deepEqual(
        stored.rows.map((r) => r.line),
        [line],
        `${stream}: the stored row is the dbgen line`,
      );
    }
  });

  test("a table's stream still refuses another table's prefixed line, naming the prefix it wants", async () => {
    const res = await post(`${fx.daemon.base}/v1/streams/orders/events`, routed("C", 77), "text/plain");
    assert.equal(res.status, 422, res.text);
    assert.match(res.json.errors[0].message, /expected a line starting with "O\|"/);
  });
});

describe("POST /ingest/stream?progress=line", () => {
  test("one {processed, entity, status[, message]} event per line, after its segment commits, over several segments", async () => {
    const before = await stats();
    // About 700 KiB: three segments. Every 50th order is refused (bad total price), every 200th line is a comment.
    const lines: string[] = [];
    const want: { entity: string; ok: boolean; field?: string }[] = [];
    let order = 100_000;
    while (lines.length < 6000) {
      if (lines.length % 200 === 0) lines.push(`# block ${lines.length}`);
      order++;
      const bad = order % 50 === 0;
      lines.push(bad ? routed("O", order).replace("|173665.47|", "|1.234|") : routed("O", order));
      want.push({ entity: "Order", ok: !bad, field: bad ? "o_totalprice" : undefined });
      if (!bad) {
        lines.push(routed("L", order, 1));
        want.push({ entity: "OrderLineItem", ok: true });
      }
      if (order % 7 === 0) {
        lines.push(routed("P", order));
        want.push({ entity: "Product", ok: true });
      }
    }
    lines.push("X|not a TPC-H line");
    want.push({ entity: "Unknown", ok: false });
    const body = lines.join("\n") + "\n";
    assert.ok(body.length > 600_000, `${body.length} bytes: several segments`);

    const { status, events } = await streamEvents(body, "?progress=line");
    assert.equal(status, 200);
    const final = events[events.length - 1];
    const perLine = events.slice(0, -1);
    assert.deepEqual(Object.keys(final.data).sort(), ["duration_ms", "failed", "inserted", "total"]);
    assert.equal(perLine.length, want.length, "one event per record line, none for comments");
    perLine.forEach((e, i) => {
      const w = want[i];
      assert.equal(e.event, undefined);
      assert.deepEqual(
        Object.keys(e.data),
        w.ok ? ["processed", "entity", "status"] : ["processed", "entity", "status", "message"],
        JSON.stringify(e.data),
      );
      assert.equal(e.data.processed, i + 1);
      assert.equal(e.data.entity, w.entity);
      assert.equal(e.data.status, w.ok ? "success" : "error");
      if (w.field) assert.match(e.data.message, new RegExp(`^${w.field}: `));
    });
    const failed = want.filter((w) => !w.ok).length;
    assert.deepEqual([final.data.total, final.data.inserted, final.data.failed], [want.length, want.length - failed, failed]);

    const stored =
      await fx.db.query(`SELECT (SELECT count(*) FROM orders WHERE o_orderkey BETWEEN 100001 AND 199999)::int AS o, (SELECT count(*) FROM lineitem WHERE l_orderkey BETWEEN 100001 AND 199999)::int AS l,
                                          (SELECT count(*) FROM part WHERE p_partkey BETWEEN 100001 AND 199999)::int AS p`);
    const count = (entity: string) => want.filter((w) => w.ok && w.entity === entity).length;
    assert.deepEqual(
      stored.rows[0],
      { o: count("Order"), l: count("OrderLineItem"), p: count("Product") },
      "every success event is a stored row",
    );
    assert.deepEqual(delta(before, await stats()), {
      Order: count("Order"),
      OrderLineItem: count("OrderLineItem"),
      Product: count("Product"),
    });
  });

  test("an upload of only comments and blank lines ends with an empty summary, not an error", async () => {
    const { status, events } = await streamEvents("# header\n\n  # more\n", "?progress=line");
    assert.equal(status, 200);
    assert.deepEqual(
      events.map((e) => e.event),
      [undefined],
    );
    assert.deepEqual([events[0].data.total, events[0].data.inserted, events[0].data.failed], [0, 0, 0]);
  });

  test("without progress=line the per-segment events stay as they were, with OrderLineItem in errors", async () => {
    const { status, events } = await streamEvents(`${routed("O", 200_001)}\n# c\n${routed("L", 200_002, 1)}\n`, "");
    assert.equal(status, 200);
    assert.equal(events.length, 2);
    assert.deepEqual([events[0].data.processed, events[0].data.inserted, events[0].data.failed], [2, 1, 1]);
    assert.deepEqual(
      events[0].data.errors.map((e: any) => [e.line_number, e.entity]),
      [[3, "OrderLineItem"]],
    );
  });
});
