/**
 * What a worker checks a batch's ids against, whichever kind a sealed generation's or group's filter is: a cuckoo
 * filter (src/shared/dedup-filter.ts), or a closed group's sealed filter (src/shared/fuse-filter.ts). Both take
 * a key's first hash word and cuckoo fingerprint, both fold to fit the budget (docs/storage.md#filter-memory).
 */
import { DedupFilter } from "./dedup-filter";
import { FuseFilter } from "./fuse-filter";

export type IdStateFilter = DedupFilter | FuseFilter;

/** The filter whose bytes are in `words`, by the kind its header names. */
export function filterFrom(words: SharedArrayBuffer): IdStateFilter {
  return FuseFilter.holds(new Uint8Array(words, 0, Math.min(8, words.byteLength))) ? new FuseFilter(words) : new DedupFilter(words);
}
