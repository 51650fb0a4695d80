/**
 * The `priority` of a POST /v1/ingest/batch envelope (`{"events": [...], "batch_id"?, "priority"?}`), read by
 * the front thread without parsing the body, so that bodies waiting for a worker are admitted in priority
 * order (src/front/dispatcher.ts). It is only a scheduling hint: the worker's parse decides the answer (a priority
 * that is not an integer from 0 to 10 is refused there) and orders its own group commit.
 *
 * A native search finds `"priority"`; only when it is there is the body walked (strings skipped with native
 * searches too) up to that point, to tell the envelope's own key (depth 1, followed by `:`) from an event's
 * field or a string. 0 when there is none, or when the value is anything but plain digits from 0 to 10 (the
 * spelling JSON.parse would also read differently, `1e1` or an escaped key, only loses the hint).
 */

const KEY = Buffer.from('"priority"');
const QUOTE = 0x22;
const BACKSLASH = 0x5c;

function isSpace(c: number): boolean {
  return c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;
}

/** Index just after the string whose opening quote is at `open`; body.length if it never closes. */
function skipString(body: Buffer, open: number): number {
  let close = body.indexOf(QUOTE, open + 1);
  while (close !== -1) {
    let slashes = 0;
    while (body[close - 1 - slashes] === BACKSLASH) slashes++;
    if (slashes % 2 === 0) return close + 1;
    close = body.indexOf(QUOTE, close + 1);
  }
  return body.length;
}

/** The value of the key whose closing quote ends just before `i`, if it is a key followed by 0..10. */
function valueAfterKey(body: Buffer, i: number): number | null {
  while (i < body.length && isSpace(body[i])) i++;
  if (body[i] !== 0x3a) return null; // not a key (a string value that reads "priority")
  i++;
  while (i < body.length && isSpace(body[i])) i++;
  let value = 0;
  let digits = 0;
  while (i < body.length && body[i] >= 0x30 && body[i] <= 0x39 && digits < 3) {
    value = value * 10 + (body[i] - 0x30);
    digits++;
    i++;
  }
  while (i < body.length && isSpace(body[i])) i++;
  if (digits === 0 || (body[i] !== 0x2c && body[i] !== 0x7d) || value > 10) return 0;
  return value;
}

export function envelopePriority(body: Buffer): number {
  let at = body.indexOf(KEY);
  let depth = 0;
  let i = 0;
  while (at !== -1) {
    while (i < at) {
      const c = body[i];
      if (c === QUOTE) {
        i = skipString(body, i);
        continue;
      }
      if (c === 0x7b || c === 0x5b) depth++;
      else if (c === 0x7d || c === 0x5d) depth--;
      i++;
    }
    if (i === at) {
      // At an opening quote outside any string: a key or a string value.
      if (depth === 1) {
        const value = valueAfterKey(body, at + KEY.length);
        if (value !== null) return value;
      }
      i = at + KEY.length;
    }
    // Inside a string that was skipped, or not the envelope's key: the next occurrence after here.
    at = body.indexOf(KEY, i);
  }
  return 0;
}
