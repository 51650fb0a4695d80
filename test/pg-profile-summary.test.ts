import assert from "node:assert/strict";
import { test } from "node:test";
import { parseStacks, stagesOf, summarizePg } from "../bench/pg-profile-summary";

/** Three samples as `perf script -F comm,pid,ip,sym` prints them: innermost frame first. */
const STACKS = `postgres 101
	    55d0a1 _bt_compare+0x41
	    55d0a2 btinsert
	    55d0a3 ExecInsertIndexTuples
	    55d0a4 CopyMultiInsertInfoFlush
	    55d0a5 CopyFrom
	    55d0a6 PostgresMain

postgres 101
	    55d0b1 MemoryContextStrdup
	    55d0b2 jsonb_from_cstring
	    55d0b3 InputFunctionCallSafe
	    55d0b4 NextCopyFrom
	    55d0b5 CopyFrom
	    55d0b6 PostgresMain

postgres 202
	    55d0c1 pg_checksum_page
	    55d0c2 FlushBuffer
	    55d0c3 CheckpointerMain
`;

test("a PostgreSQL sample is put in the stage of what it was doing, COPY rows split by the innermost row step", () => {
  const stacks = parseStacks(STACKS);
  assert.equal(stacks.length, 3);
  assert.equal(stacks[0][stacks[0].length - 1], "_bt_compare", "offsets are cut off, innermost last");
  assert.deepEqual(stagesOf(stacks[0]), { stage: "COPY FROM: index insertion", within: [] });
  assert.equal(stagesOf(stacks[1]).stage, "COPY FROM: jsonb input", "the input function, not the row reading around it");
  assert.deepEqual(stagesOf(stacks[2]), { stage: "checkpointer", within: ["writing out dirty buffers (FlushBuffer)", "page checksums"] });
  const summary = summarizePg(STACKS, 9);
  assert.match(summary, /33\.3% +3\.00 µs\/event {2}COPY FROM: index insertion/);
  assert.match(summary, /33\.3% +3\.00 µs\/event {2}page checksums/);
});
