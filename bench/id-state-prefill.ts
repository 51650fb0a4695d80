/**
 * Fills a deduplicating stream's id state with `count` remembered ids before the timed phases, so the bench
 * measures the daemon against a window that already holds what weeks of real traffic leave there
 * (docs/performance.md#workload). Ids are of the kind the run sends (random UUIDv4 or time-ordered UUIDv7),
 * with times spread over the last 7 days.
 *
 * This version writes today's id table (`<table>_dedup`: the key column, plus the time column when the
 * stream has one) with INSERT ... SELECT in chunks of about a million, each chunk sorted so that it walks the
 * index once. A run against an existing DATABASE_URL that already holds `count` ids skips the work.
 */
import pg from "pg";
import { dedupTable, qualifiedName, quoteIdent } from "../src/shared/sql-identifiers";
import type { StreamDefinition } from "../src/shared/stream-definition";

const CHUNK = 1_000_000;

export async function prefillIdState(
  url: string,
  schema: string,
  stream: StreamDefinition,
  count: number,
  kind: "uuidv4" | "uuidv7",
): Promise<void> {
  const keyColumn = stream.columns.find((c) => c.name === stream.dedupKey);
  if (!keyColumn) throw new Error(`stream ${stream.name} has no dedup key: no id state to fill`);
  if (keyColumn.type !== "text" && keyColumn.type !== "uuid") throw new Error(`stream ${stream.name}: dedup key of type ${keyColumn.type} cannot hold UUIDs`);
  const ids = qualifiedName(schema, dedupTable(stream.table));
  const key = quoteIdent(keyColumn.name);
  const cast = keyColumn.type === "text" ? "::text" : "";
  const withTime = stream.timeColumn !== undefined;
  const columns = withTime ? `${key}, ${quoteIdent(stream.timeColumn!)}` : key;
  // `age` spreads the ids over 7 days; a UUIDv7 carries the same moment in its first 48 bits (PostgreSQL 18's uuidv7(shift)).
  const id = kind === "uuidv4" ? "gen_random_uuid()" : "uuidv7(-age)";
  const values = withTime ? `${id}${cast}, now() - age` : `${id}${cast}`;

  const client = new pg.Client({ connectionString: url, application_name: "ingestd-bench-prefill" });
  await client.connect();
  try {
    let have = Number((await client.query<{ n: string }>(`SELECT count(*) AS n FROM ${ids}`)).rows[0].n);
    while (have < count) {
      const n = Math.min(CHUNK, count - have);
      await client.query(
        `INSERT INTO ${ids} (${columns}) SELECT ${values} FROM ` +
          `(SELECT random() * interval '7 days' AS age FROM generate_series(1, ${n})) AS ages ORDER BY 1`,
      );
      have += n;
    }
    await client.query(`VACUUM (ANALYZE) ${ids}`);
  } finally {
    await client.end().catch(() => undefined);
  }
}
