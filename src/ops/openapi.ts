/**
 * The OpenAPI 3.1 document served at GET /openapi.json. Request schemas come from the stream definitions,
 * which typia generated from the same TypeScript types it compiles the validators from, so the document
 * cannot drift from what the daemon accepts.
 */
import type { StreamDefinition } from "../shared/stream-definition";
import { filterableColumns, READ_ALIASES, readTimeColumn } from "../shared/read-columns";

type Schema = Record<string, unknown>;

const json = (schema: Schema) => ({ "application/json": { schema } });
const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` });

function recordSchemaName(stream: StreamDefinition): string {
  return ((stream.schema.schemas[0] as { $ref?: string }).$ref ?? "").replace("#/components/schemas/", "");
}

const errorResponses = {
  "400": {
    description:
      "The body cannot be parsed at all (malformed JSON, invalid UTF-8, empty), or X-Ingest-Priority is not an integer from 0 to 10.",
    content: json(ref("Error")),
  },
  "401": { description: "Missing or unknown API key.", content: json(ref("Error")) },
  "403": { description: "The API key may not write this stream.", content: json(ref("Error")) },
  "404": { description: "Unknown stream.", content: json(ref("Error")) },
  "405": { description: "Wrong method.", content: json(ref("Error")) },
  "411": { description: "Content-Length missing.", content: json(ref("Error")) },
  "413": { description: "Body larger than MAX_BODY_MB (compressed, or once inflated).", content: json(ref("Error")) },
  "415": {
    description: "Content type not accepted by the stream, or a Content-Encoding other than gzip, deflate, br.",
    content: json(ref("Error")),
  },
  "429": { description: "Rate limited; see Retry-After.", content: json(ref("Error")) },
  "503": { description: "Database unavailable or daemon overloaded; nothing was stored. See Retry-After.", content: json(ref("Error")) },
};

/** docs/architecture.md#priority: the only way the front knows a request's priority before reading its body. */
const priorityHeader = {
  name: "X-Ingest-Priority",
  in: "header",
  required: false,
  description:
    "Priority 0..10 (default 0), higher served first under contention; known before the body is read, so it also orders admission to the ring. With an envelope priority too, the higher counts.",
  schema: { type: "integer", minimum: 0, maximum: 10 },
};

const pagingParameters = [
  {
    name: "since",
    in: "query",
    required: false,
    description: "Inclusive lower bound of the time column (ISO-8601).",
    schema: { type: "string", format: "date-time" },
  },
  {
    name: "until",
    in: "query",
    required: false,
    description: "Exclusive upper bound of the time column (ISO-8601).",
    schema: { type: "string", format: "date-time" },
  },
  {
    name: "limit",
    in: "query",
    required: false,
    description: "Rows per page (default 100).",
    schema: { type: "integer", minimum: 1, maximum: 1000 },
  },
  { name: "cursor", in: "query", required: false, description: "next_cursor of the previous page, unchanged.", schema: { type: "string" } },
  {
    name: "order",
    in: "query",
    required: false,
    description: "desc: newest first (default); asc: oldest first.",
    schema: { type: "string", enum: ["desc", "asc"] },
  },
];

const readErrors = {
  "400": {
    description: "A parameter is malformed, or filters on a column that is not indexed (the message names the allowed ones).",
    content: json(ref("Error")),
  },
  "401": errorResponses["401"],
  "403": { description: "The API key may not read this stream (its `read` list).", content: json(ref("Error")) },
  "503": {
    description: "The read pool is saturated, the query timed out, or the database is unavailable. See Retry-After.",
    content: json(ref("Error")),
  },
};

const page = (description: string) => ({
  description,
  content: json({
    type: "object",
    required: ["records", "next_cursor"],
    properties: {
      records: { type: "array", items: { type: "object" } },
      next_cursor: { type: ["string", "null"], description: "Pass as `cursor` for the next page; null on the last page." },
    },
  }),
});

/** Reading back (docs/http-api.md#reading-back): one records path per stream, with its filterable columns. */
function readPaths(streams: readonly StreamDefinition[]): Record<string, unknown> {
  const paths: Record<string, unknown> = {};
  for (const stream of streams) {
    const filters = filterableColumns(stream).map((name) => ({
      name,
      in: "query",
      required: false,
      description: `Only rows whose ${name} equals this value.`,
      schema: { type: "string" },
    }));
    paths[`/v1/streams/${stream.name}/records`] = {
      get: {
        operationId: `read_${stream.name}`,
        summary: `Stored ${stream.name} records, paged by (${readTimeColumn(stream)}, a unique tiebreak).`,
        parameters: [...pagingParameters, ...filters],
        responses: {
          "200": page("One page of records: the table's columns and ingested_at."),
          ...readErrors,
          "404": errorResponses["404"],
        },
      },
    };
  }
  for (const alias of READ_ALIASES) {
    const records = paths[`/v1/streams/${alias.stream}/records`] as { get: Record<string, unknown> } | undefined;
    if (records) paths[alias.path] = { get: { ...records.get, operationId: `read_${alias.stream}_seed002` } };
  }
  paths["/v1/dead-letters"] = {
    get: {
      operationId: "read_dead_letters",
      summary: "Rejected records (ingest_dead_letters), paged by (received_at, id).",
      parameters: [{ name: "stream", in: "query", required: false, schema: { type: "string" } }, ...pagingParameters],
      responses: { "200": page("One page of dead letters."), ...readErrors },
    },
  };
  paths["/v1/sources"] = {
    get: {
      operationId: "list_sources",
      summary: "Pull sources: state, last and next run, the last run's records, error, watermark (docs/sources.md).",
      responses: {
        "200": {
          description: "The configured sources.",
          content: json({ type: "object", required: ["sources"], properties: { sources: { type: "array", items: { type: "object" } } } }),
        },
      },
    },
  };
  paths["/v1/sources/{name}/run"] = {
    parameters: [{ name: "name", in: "path", required: true, schema: { type: "string" } }],
    post: {
      operationId: "run_source",
      summary: "Runs a pull source now and answers once the run is over.",
      responses: {
        "200": { description: "The source after the run (state failing when the run failed).", content: json({ type: "object" }) },
        "401": errorResponses["401"],
        "403": { description: "The API key may not write the source's stream.", content: json(ref("Error")) },
        "404": { description: "No such source.", content: json(ref("Error")) },
        "409": { description: "The source is running (here or on another daemon).", content: json(ref("Error")) },
        "503": errorResponses["503"],
      },
    },
  };
  paths["/v1/dead-letters/replay"] = {
    post: {
      operationId: "replay_dead_letters",
      summary: "Sends dead letters of a stream through ingest again; each dead letter is replayed once.",
      requestBody: {
        required: true,
        content: json({
          oneOf: [
            {
              type: "object",
              required: ["stream", "ids"],
              additionalProperties: false,
              properties: {
                stream: { type: "string" },
                ids: { type: "array", minItems: 1, maxItems: 1000, items: { type: ["integer", "string"] } },
              },
            },
            {
              type: "object",
              required: ["stream", "since"],
              additionalProperties: false,
              properties: { stream: { type: "string" }, since: { type: "string", format: "date-time" } },
            },
          ],
        }),
      },
      responses: {
        "200": {
          description: "What the replay stored and what is still rejected.",
          content: json({
            type: "object",
            required: ["status", "stream", "replayed", "accepted", "duplicates", "rejected", "not_replayed", "more", "errors"],
            properties: {
              status: { type: "string" },
              stream: { type: "string" },
              replayed: { type: "integer" },
              accepted: { type: "integer" },
              duplicates: { type: "integer" },
              rejected: { type: "integer" },
              not_replayed: { type: "integer" },
              more: { type: "boolean", description: "More than 1000 matched: send the request again for the rest." },
              errors: { type: "array", items: { type: "object" } },
            },
          }),
        },
        "400": { description: "The body is not a replay request (the message names the field).", content: json(ref("Error")) },
        "401": errorResponses["401"],
        "403": { description: "The API key may not write, or may not read, this stream.", content: json(ref("Error")) },
        "404": errorResponses["404"],
        "409": { description: "Another replay of this stream is under way (one at a time across daemons).", content: json(ref("Error")) },
        "429": errorResponses["429"],
        "503": {
          description: "The database could not take (some of) them; those stay replayable. See Retry-After.",
          content: json(ref("Error")),
        },
      },
    },
  };
  return paths;
}

/** `ignoringUnknown`: the streams that drop unknown fields rather than refuse them (ops/config.ts). */
export function openApiDocument(
  streams: readonly StreamDefinition[],
  version: string,
  ignoringUnknown: ReadonlySet<string> = new Set(),
): Schema {
  const schemas: Record<string, unknown> = {
    Error: {
      type: "object",
      required: ["status", "message"],
      properties: { status: { const: "error" }, error: { type: "string" }, message: { type: "string" } },
    },
    RecordError: {
      type: "object",
      required: ["index", "path", "expected", "message"],
      properties: {
        index: { type: "integer", description: "Position of the record in the request." },
        path: { type: "string", description: "Field path inside the record; `$` for the record itself." },
        expected: { type: "string" },
        message: { type: "string" },
        line: { type: "integer", description: "1-based line number (line formats)." },
      },
    },
    IngestResult: {
      type: "object",
      required: ["status", "stream", "batch_id", "accepted", "rejected", "duplicates", "errors", "duration_ms"],
      properties: {
        status: { enum: ["success", "partial", "rejected"] },
        stream: { type: "string" },
        batch_id: { type: "string" },
        accepted: { type: "integer", description: "Records committed in PostgreSQL." },
        rejected: { type: "integer" },
        duplicates: { type: "integer", description: "Records whose id was already stored (deduplicating streams)." },
        errors: { type: "array", items: ref("RecordError") },
        duration_ms: { type: "number" },
      },
    },
    Accepted: {
      type: "object",
      required: ["status", "batch_id"],
      properties: { status: { const: "accepted" }, stream: { type: "string" }, batch_id: { type: "string" } },
    },
    BatchStatus: {
      type: "object",
      required: ["batch_id", "stream", "status"],
      properties: {
        batch_id: { type: "string" },
        stream: { type: "string" },
        status: { enum: ["pending", "committed", "partial", "failed"] },
        received: { type: ["integer", "null"] },
        accepted: { type: "integer" },
        rejected: { type: "integer" },
        duplicates: { type: "integer" },
        created_at: { type: "string", format: "date-time" },
        committed_at: { type: ["string", "null"], format: "date-time" },
        message: { type: "string", description: "Why the commit failed (status failed, nothing stored)." },
      },
    },
  };
  for (const stream of streams) {
    for (const [name, schema] of Object.entries(stream.schema.components.schemas ?? {})) {
      // A stream refusing unknown fields says so; one ignoring them takes (and drops) any.
      const refuses = !ignoringUnknown.has(stream.name);
      schemas[name] = name === recordSchemaName(stream) ? { ...(schema as Schema), additionalProperties: !refuses } : schema;
    }
  }

  const ingestResponses = {
    "200": { description: "Every record committed.", content: json(ref("IngestResult")) },
    "202": {
      description: "`Prefer: respond-async`: the body is in the ring; poll GET /v1/batches/{batch_id}.",
      content: json(ref("Accepted")),
    },
    "207": { description: "Some records rejected; the others are committed.", content: json(ref("IngestResult")) },
    "422": { description: "Every record invalid; nothing stored.", content: json(ref("IngestResult")) },
    ...errorResponses,
  };

  // Beacons cannot set headers: the key may come in the query (proxies log URLs; docs/http-api.md#beacons).
  const ingestParameters = [
    {
      name: "key",
      in: "query",
      required: false,
      description: "API key, for navigator.sendBeacon (URLs are logged by proxies: prefer a header).",
      schema: { type: "string" },
    },
    {
      name: "Content-Encoding",
      in: "header",
      required: false,
      description: "Compressed body, inflated up to MAX_BODY_MB.",
      schema: { enum: ["gzip", "deflate", "br", "identity"] },
    },
    {
      name: "X-Request-ID",
      in: "header",
      required: false,
      description: "Echoed on the answer and in the refusal's log line (1 to 200 printable characters; else generated).",
      schema: { type: "string", maxLength: 200 },
    },
    priorityHeader,
  ];
  const paths: Record<string, unknown> = {};
  for (const stream of streams) {
    const record = ref(recordSchemaName(stream));
    const content: Record<string, unknown> = {};
    if (stream.formats.includes("json"))
      content["application/json"] = { schema: { oneOf: [record, { type: "array", items: record, minItems: 1 }] } };
    if (stream.formats.includes("ndjson"))
      content["application/x-ndjson"] = {
        schema: { type: "string", description: `One ${recordSchemaName(stream)} JSON object per line.` },
      };
    if (stream.formats.includes("text"))
      content["text/plain"] = { schema: { type: "string", description: `One line per record, starting with "${stream.linePrefix}|".` } };
    else if (stream.formats.includes("json"))
      content["text/plain"] = {
        schema: { type: "string", description: "navigator.sendBeacon: one JSON value (a record or an array), else NDJSON." },
      };
    paths[`/v1/streams/${stream.name}/events`] = {
      post: {
        operationId: `ingest_${stream.name}`,
        summary: `Ingest into ${stream.name}: ${stream.description}`,
        parameters: ingestParameters,
        requestBody: { required: true, content },
        responses: ingestResponses,
      },
    };
  }
  const events = streams.find((s) => s.name === "events");
  if (events) {
    paths["/v1/ingest/batch"] = {
      post: {
        operationId: "ingest_batch",
        summary: "Ingest a batch of events with an optional batch id and priority (0..10, higher is served first under contention).",
        parameters: ingestParameters,
        requestBody: {
          required: true,
          content: json({
            type: "object",
            required: ["events"],
            properties: {
              events: { type: "array", items: ref(recordSchemaName(events)), minItems: 1 },
              batch_id: { type: "string", minLength: 1, maxLength: 128 },
              priority: { type: "integer", minimum: 0, maximum: 10 },
            },
          }),
        },
        responses: ingestResponses,
      },
    };
  }
  const product = streams.find((s) => s.name === "product_events");
  if (product) {
    const record = ref(recordSchemaName(product));
    paths["/events"] = {
      post: {
        operationId: "ingest_product_events_compat", // unique: ingest_product_events is the canonical route
        summary: "Ingest one product event or an array of them.",
        parameters: ingestParameters,
        requestBody: { required: true, content: json({ oneOf: [record, { type: "array", items: record, minItems: 1 }] }) },
        responses: ingestResponses,
      },
    };
  }
  const lines = {
    required: true,
    content: { "text/plain": { schema: { type: "string", description: "TPC-H lines: O|, L|, C| or P| prefixed, one per line." } } },
  };
  paths["/ingest/message"] = {
    post: {
      operationId: "ingest_line",
      summary: "Ingest one TPC-H line.",
      requestBody: lines,
      responses: {
        "200": { description: "Stored." },
        "400": { description: "Line rejected, with entity and reason." },
        "503": errorResponses["503"],
      },
    },
  };
  paths["/ingest/batch"] = {
    post: {
      operationId: "ingest_lines",
      summary: "Ingest TPC-H lines; each failed line is reported, the others stored.",
      requestBody: lines,
      responses: {
        "200": { description: "All lines stored." },
        "207": { description: "Some lines failed." },
        "503": errorResponses["503"],
      },
    },
  };
  paths["/ingest/stream"] = {
    post: {
      operationId: "ingest_line_stream",
      summary: "Chunked TPC-H upload; progress as server-sent events.",
      requestBody: lines,
      responses: {
        "200": {
          description: "text/event-stream of progress events and a final summary.",
          content: { "text/event-stream": { schema: { type: "string" } } },
        },
      },
    },
  };
  const batch = {
    parameters: [{ name: "batch_id", in: "path", required: true, schema: { type: "string" } }],
    get: {
      operationId: "batch_status",
      summary: "Outcome of a request by its batch id.",
      responses: { "200": { description: "Batch status.", content: json(ref("BatchStatus")) }, "404": { description: "Unknown batch." } },
    },
  };
  paths["/v1/batches/{batch_id}"] = batch;
  paths["/v1/batch/{batch_id}/status"] = { ...batch, get: { ...batch.get, operationId: "batch_status_compat" } };
  paths["/v1/ws"] = {
    get: {
      operationId: "websocket_stream",
      summary: "WebSocket upgrade: each frame is a batch, acknowledged in order after commit (see README).",
      parameters: [{ name: "stream", in: "query", required: true, schema: { type: "string", enum: streams.map((s) => s.name) } }],
      responses: { "101": { description: "Switching protocols." }, "404": { description: "Unknown stream." } },
    },
  };
  Object.assign(paths, readPaths(streams));
  for (const [path, summary] of [
    ["/health", "Liveness with a real database check."],
    ["/v1/health", "Same as /health."],
    ["/metrics", "Prometheus metrics."],
    ["/v1/metrics", "Same as /metrics."],
    ["/v1/latency", "HDR latency percentiles per stage and stream."],
    ["/stats", "Totals since start."],
  ] as const) {
    paths[path] = { get: { operationId: `get_${path.replace(/\W/g, "_")}`, summary, responses: { "200": { description: "OK." } } } };
  }

  return {
    openapi: "3.1.0",
    info: {
      title: "ingestd",
      version,
      description: "Event ingestion: every accepted record is committed in PostgreSQL before it is acknowledged.",
    },
    paths,
    components: {
      schemas,
      securitySchemes: {
        bearer: { type: "http", scheme: "bearer" },
        apiKey: { type: "apiKey", in: "header", name: "X-API-Key" },
      },
    },
  };
}
