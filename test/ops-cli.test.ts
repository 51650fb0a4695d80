/**
 * The `ingestd` command line: --help, usage errors, and `check-config` rejecting each kind of bad value
 * with the field's name and exit status 78 (also what `serve` does before starting anything).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { CLI, ROOT } from "./harness";
import { configEnv } from "./ops-tools";

const EX_USAGE = 64;
const EX_CONFIG = 78;
const shipped = JSON.parse(fs.readFileSync(path.join(ROOT, "config/ingestd.json"), "utf8"));

let dir: string;
before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "ingestd-cli-"));
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

/** Runs the CLI with only the given overrides (none inherited from the test's own environment). */
function run(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd: ROOT, env: configEnv(env), encoding: "utf8", timeout: 30_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

let fileCounter = 0;
function configFile(content: unknown): string {
  const file = path.join(dir, `config-${++fileCounter}.json`);
  fs.writeFileSync(file, typeof content === "string" ? content : JSON.stringify(content, null, 2));
  return file;
}

test("--help lists every command", () => {
  for (const args of [["--help"], ["-h"], ["help"], ["top", "--help"]]) {
    const r = run(args);
    assert.equal(r.code, 0, r.stderr);
    for (const cmd of ["serve", "top", "check-config", "partitions", "bench"])
      assert.match(r.stdout, new RegExp(`^  ${cmd}\\b`, "m"), `${args}: ${cmd}`);
  }
});

test("bench hands its arguments to bench/run.js (runBench)", () => {
  const r = run(["bench", "--help"]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /bench/);
  assert.match(r.stdout, /--duration/, "bench's own help, not ingestd's");
});

test("usage errors exit 64", () => {
  const unknown = run(["frobnicate"]);
  assert.equal(unknown.code, EX_USAGE);
  assert.match(unknown.stderr, /unknown command "frobnicate"/);
  const badOption = run(["top", "--no-such-option"]);
  assert.equal(badOption.code, EX_USAGE);
  assert.match(badOption.stderr, /--no-such-option/);
  const badInterval = run(["top", "--url", "http://127.0.0.1:1", "--interval", "fast"]);
  assert.equal(badInterval.code, EX_USAGE);
  assert.match(badInterval.stderr, /--interval/);
  const badPartitions = run(["partitions", "shuffle"]);
  assert.equal(badPartitions.code, EX_USAGE);
  assert.match(badPartitions.stderr, /unknown action "shuffle"/);
});

test("check-config accepts the shipped configuration", () => {
  const r = run(["check-config"]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /configuration OK/);
});

describe("check-config rejects each kind of bad value, naming the field, exit 78", () => {
  const cases: Array<{ name: string; file?: unknown; env?: Record<string, string>; expect: RegExp[] }> = [
    {
      name: "file that is not JSON",
      file: '{\n  "port": 8080,\n  "host": \n}',
      expect: [/cannot read config file .*config-\d+\.json/, /is not valid JSON/],
    },
    {
      name: "file that is not JSON, with the place",
      file: '{\n  "port": 8080\n  "host": "x"\n}',
      expect: [/cannot read config file .*config-\d+\.json: .*\(line 3, column 3\)/],
    },
    { name: "file that is a JSON array", file: "[]", expect: [/expected a JSON object/] },
    { name: "wrong type", file: { ...shipped, port: "8080" }, expect: [/^  port: expected .*number.*got "8080"$/m] },
    { name: "out of range", file: { ...shipped, workers: 0 }, expect: [/^  workers: expected .*Minimum<1>.*got 0$/m] },
    {
      name: "out of range, upper bound",
      file: { ...shipped, ringMb: 99999 },
      expect: [/^  ringMb: expected .*Maximum<4096>.*got 99999$/m],
    },
    { name: "not an integer", file: { ...shipped, batchSize: 2.5 }, expect: [/^  batchSize: expected .*int32.*got 2\.5$/m] },
    { name: "unknown field", file: { ...shipped, prot: 8080 }, expect: [/^  prot: unknown field/m] },
    { name: "unknown nested field", file: { ...shipped, ws: { ...shipped.ws, windw: 4 } }, expect: [/^  ws\.windw: unknown field/m] },
    { name: "nested out of range", file: { ...shipped, ws: { ...shipped.ws, window: 0 } }, expect: [/^  ws\.window: expected .*got 0$/m] },
    {
      name: "value not in the allowed set",
      file: { ...shipped, logLevel: "verbose" },
      expect: [/^  logLevel: expected .*"info".*got "verbose"$/m],
    },
    {
      name: "missing field",
      file: (() => {
        const c = { ...shipped };
        delete c.host;
        return c;
      })(),
      expect: [/^  host: missing/m],
    },
    { name: "bad pattern", file: { ...shipped, dbSchema: "Robert'); DROP" }, expect: [/^  dbSchema: expected .*Pattern/m] },
    { name: "several errors at once, all listed", file: { ...shipped, port: -1, workers: "two" }, expect: [/^  port: /m, /^  workers: /m] },
    { name: "cross-field rule", file: { ...shipped, ringMb: 4, maxBodyMb: 16 }, expect: [/ringMb: must be at least maxBodyMb/] },
    { name: "env PORT=abc", env: { PORT: "abc" }, expect: [/PORT: expected an integer, got "abc"/] },
    { name: "env PORT out of range", env: { PORT: "70000" }, expect: [/^  port \(from PORT\): expected .*got 70000$/m] },
    { name: "env WORKERS=0", env: { WORKERS: "0" }, expect: [/^  workers \(from WORKERS\): expected .*got 0$/m] },
    {
      name: "env WORKER_YOUNG_GENERATION_MB below V8's least",
      env: { WORKER_YOUNG_GENERATION_MB: "2" },
      expect: [/^  workerYoungGenerationMb \(from WORKER_YOUNG_GENERATION_MB\): expected .*Minimum<3>.*got 2$/m],
    },
    { name: "env BATCH_SIZE=1e3", env: { BATCH_SIZE: "1e3" }, expect: [/BATCH_SIZE: expected an integer, got "1e3"/] },
    { name: "env LOG_LEVEL=loud", env: { LOG_LEVEL: "loud" }, expect: [/^  logLevel \(from LOG_LEVEL\): expected .*got "loud"$/m] },
    { name: "env TLS_CERT without TLS_KEY", env: { TLS_CERT: "/etc/hostname" }, expect: [/tlsCert \/ tlsKey: set both or neither/] },
    {
      name: "env API_KEYS_FILE that does not exist",
      env: { API_KEYS_FILE: "/nonexistent/keys.json" },
      expect: [/apiKeysFile: file not found/],
    },
    {
      name: "env HLOG_PATH in a missing directory",
      env: { HLOG_PATH: "/nonexistent/dir/latency.hlog" },
      expect: [/hlogPath: directory not found/],
    },
    {
      name: "INGESTD_CONFIG naming a missing file",
      env: { INGESTD_CONFIG: "/nonexistent/ingestd.json" },
      expect: [/cannot read config file \/nonexistent\/ingestd\.json/],
    },
  ];
  for (const c of cases) {
    test(c.name, () => {
      const env = { ...(c.file === undefined ? {} : { INGESTD_CONFIG: configFile(c.file) }), ...c.env };
      const r = run(["check-config"], env);
      assert.equal(r.code, EX_CONFIG, `exit status for ${c.name}: ${r.stdout}${r.stderr}`);
      assert.equal(r.stdout, "", "nothing claimed OK");
      for (const re of c.expect) assert.match(r.stderr, re);
    });
  }
});

test("serve refuses a bad configuration the same way, before starting anything", () => {
  const started = Date.now();
  const r = run(["serve"], { WORKERS: "0", DATABASE_URL: "postgres://nobody@127.0.0.1:1/none" });
  assert.equal(r.code, EX_CONFIG, r.stderr);
  assert.match(r.stderr, /workers \(from WORKERS\)/);
  assert.doesNotMatch(r.stdout, /listening/);
  assert.ok(Date.now() - started < 10_000, "no connection attempts first");
});
