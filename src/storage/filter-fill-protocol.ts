/** Messages between the front and the filter-fill thread (src/storage/filter-fill.ts). */

/** A key as the thread takes it: the 16 bytes of its uuid. */
export const KEY_BYTES = 16;

export type FillMessage =
  /** `n` keys of fill number `fill`, back to back in `keys` (transferred), each added once to every filter of `filters`. */
  | { type: "keys"; fill: number; filters: SharedArrayBuffer[]; keys: ArrayBuffer; n: number }
  /** Answered once every batch sent before it is in its filters. */
  | { type: "settle"; fill: number; seq: number };

/** `full`: a filter of that fill had no room for a key (it misses keys: the front discards it). */
export interface FillReply {
  seq: number;
  full: boolean;
}
