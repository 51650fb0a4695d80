import assert from "node:assert/strict";
import { test } from "node:test";
import { FrameTemplate, IsoTimeWriter } from "../bench/event-factory";

const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

test("the bench's frames: each stamp gives every event a new random UUIDv4 and a time a few seconds before the send", () => {
  const frame = new FrameTemplate("uuidv4", 100);
  const seen = new Set<string>();
  for (const now of [Date.parse("2026-12-05T16:00:00.000Z"), Date.parse("2027-01-01T00:00:02.345Z"), Date.now()]) {
    const events = JSON.parse(frame.stamp(now).toString("latin1")) as Array<{ event_id: string; timestamp: string }>;
    assert.equal(events.length, 100);
    for (const e of events) {
      assert.match(e.event_id, UUID_V4);
      assert.ok(!seen.has(e.event_id), "ids are not repeated");
      seen.add(e.event_id);
      assert.equal(new Date(e.timestamp).toISOString(), e.timestamp);
      const lag = now - Date.parse(e.timestamp);
      assert.ok(lag >= 0 && lag < 5_000, `${e.timestamp} lags ${now} by ${lag} ms`);
    }
  }
  // Every hex digit of the random part varies across the ids (no byte left unwritten or fixed).
  for (let pos = 0; pos < 36; pos++) {
    if ([8, 13, 14, 18, 19, 23].includes(pos)) continue;
    assert.ok(new Set([...seen].map((id) => id[pos])).size > 8, `position ${pos}`);
  }
});

test("times are written as toISOString() spells them, across midnights, month and year ends and a leap day", () => {
  const writer = new IsoTimeWriter();
  const buf = Buffer.alloc(24);
  const points = ["2026-12-31T23:59:59.999Z", "2028-02-29T00:00:00.000Z", "2026-03-01T00:00:00.001Z", "2000-01-01T12:34:56.789Z"].map(
    Date.parse,
  );
  const times: number[] = [];
  for (const p of points) for (let d = -3_000; d <= 3_000; d += 7) times.push(p + d, p - d);
  for (let i = 0; i < 20_000; i++) times.push(Date.parse("1990-01-01") + Math.floor(Math.random() * 4e12));
  for (const t of times) {
    writer.write(t, buf, 0);
    assert.equal(buf.toString("latin1"), new Date(t).toISOString(), String(t));
  }
});
