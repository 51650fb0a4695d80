/**
 * Compressed request bodies (Content-Encoding gzip, deflate, br), inflated here rather than on the front
 * thread. Inflating stops as soon as the output passes MAX_BODY_MB, so a small body that would expand to
 * gigabytes costs at most that much memory and the time to produce it (docs/http-api.md#compressed-bodies).
 */
import zlib from "node:zlib";
import type { BodyEncoding } from "../../src/shared/task-protocol";

/** The body inflates past the limit: nothing of it is read. */
export class BodyTooLarge extends Error {}

/** The body is not valid data of its Content-Encoding. */
export class BadCompression extends Error {}

export function inflateBody(bytes: Uint8Array, encoding: BodyEncoding, maxBytes: number): Uint8Array {
  if (encoding === "identity") return bytes;
  const options: zlib.ZlibOptions = { maxOutputLength: maxBytes };
  try {
    if (encoding === "gzip") return zlib.gunzipSync(bytes, options);
    if (encoding === "br") return zlib.brotliDecompressSync(bytes, { maxOutputLength: maxBytes });
    return inflateDeflate(bytes, options);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ERR_BUFFER_TOO_LARGE") {
      throw new BodyTooLarge(
        `body inflates (Content-Encoding ${encoding}) past the limit of ${maxBytes} bytes (MAX_BODY_MB); nothing was stored`,
      );
    }
    throw new BadCompression(`request body is not valid ${encoding} data: ${(err as Error).message}`);
  }
}

/**
 * HTTP's `deflate` is zlib-wrapped (RFC 9110 §8.4.1.2), but some clients send raw deflate: a stream whose
 * first two bytes are no zlib header is read as raw.
 */
function inflateDeflate(bytes: Uint8Array, options: zlib.ZlibOptions): Uint8Array {
  const zlibHeader = bytes.length >= 2 && (bytes[0] & 0x0f) === 8 && ((bytes[0] << 8) | bytes[1]) % 31 === 0;
  return zlibHeader ? zlib.inflateSync(bytes, options) : zlib.inflateRawSync(bytes, options);
}
