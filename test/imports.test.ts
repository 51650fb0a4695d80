/**
 * The folder layout is the architecture: this test reads every .ts file under src/, workers/ and config/,
 * resolves each relative import to its folder (layer), and fails on an import that runs against the order
 * below, naming the file and the edge. The README's layout section describes the same order.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";

const ROOT = path.resolve(__dirname, "../..");
const SCANNED = ["src", "workers", "config"];

/** Layers, most specific first: a path belongs to the first one it is, or is under. */
const LAYERS = [
  "src/shared",
  "src/ops",
  "src/storage",
  "src/security",
  "src/sources",
  "src/front",
  "src/commands",
  "src/cli",
  "src/client",
  "config",
  "workers/records",
  "workers/commit",
  "workers",
  "bench",
  "test",
] as const;
type Layer = (typeof LAYERS)[number];

const SRC_ALL: readonly Layer[] = ["src/shared", "src/ops", "src/storage", "src/security", "src/sources", "src/front", "src/commands"];

/**
 * What each layer may import besides itself. bench/ and test/ are leaves: they are not scanned, and no row
 * lists them, so nothing in src/, workers/ or config/ may import them. src/front does not list workers: the
 * dispatcher starts workers/ingest-task.js by file path, not by import. Nothing imports the entry src/cli.
 */
const ALLOWED: Record<Exclude<Layer, "bench" | "test">, readonly Layer[]> = {
  "src/shared": [],
  config: ["src/shared"],
  workers: ["src/shared", "config", "workers/records", "workers/commit"],
  "workers/records": ["src/shared", "config", "workers"], // parsing and validation never reach for the commit
  "workers/commit": ["src/shared", "config", "workers", "workers/records"],
  "src/ops": ["src/shared", "config"],
  "src/storage": ["src/shared", "config", "src/ops"],
  "src/security": ["src/shared", "config", "src/ops"],
  // Pull sources hand their records to a submit function the front gives them: they never import it.
  "src/sources": ["src/shared", "config", "src/ops", "src/storage"],
  "src/front": ["src/shared", "config", "src/ops", "src/storage", "src/security", "src/sources"],
  "src/commands": [...SRC_ALL, "config", "src/client"],
  // The producer client ships to other programs (and browsers): it carries only the protocol's shapes.
  "src/client": ["src/shared"],
  "src/cli": [...SRC_ALL, "config"],
};

interface SourceFile {
  /** Repository-relative, with forward slashes. */
  file: string;
  text: string;
}

interface Edge {
  file: string;
  specifier: string;
  /** Repository-relative path the specifier names, without .ts/.js. */
  target: string;
}

interface Violation extends Edge {
  message: string;
}

function layerOf(relPath: string): Layer | null {
  const p = relPath.replace(/\.(ts|js)$/, "");
  return LAYERS.find((l) => p === l || p.startsWith(`${l}/`)) ?? null;
}

/**
 * Comments out of the way (an import named in a comment is no edge); string and template literals are
 * matched first so that "http://…" is not taken for a comment.
 */
function withoutComments(text: string): string {
  return text.replace(
    /("(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|`(?:[^`\\]|\\.)*`)|\/\*[\s\S]*?\*\/|\/\/[^\n]*/g,
    (m, literal?: string) => literal ?? "",
  );
}

// `… from "x"` (import and export), `import "x"`, `import("x")` (also in `typeof import`), `require("x")`.
const SPECIFIER =
  /\bfrom\s*["']([^"']+)["']|\bimport\s*["']([^"']+)["']|\bimport\s*\(\s*["']([^"']+)["']\s*\)|\brequire\s*\(\s*["']([^"']+)["']\s*\)/g;

/** One edge per imported module: `require("x") as typeof import("x")` names it twice. */
function relativeImports(source: SourceFile): Edge[] {
  const edges = new Map<string, Edge>();
  for (const m of withoutComments(source.text).matchAll(SPECIFIER)) {
    const specifier = m[1] ?? m[2] ?? m[3] ?? m[4];
    if (!specifier.startsWith(".")) continue; // packages and node: builtins
    const target = path.posix.normalize(path.posix.join(path.posix.dirname(source.file), specifier)).replace(/\.(ts|js)$/, "");
    if (!edges.has(target)) edges.set(target, { file: source.file, specifier, target });
  }
  return [...edges.values()];
}

/** package.json is required relative to the compiled file (dist/…), where it is the root manifest: no layer. */
function isManifest(edge: Edge): boolean {
  return path.posix.normalize(path.posix.join("dist", path.posix.dirname(edge.file), edge.specifier)) === "package.json";
}

function check(sources: readonly SourceFile[]): Violation[] {
  const violations: Violation[] = [];
  for (const source of sources) {
    const from = layerOf(source.file);
    if (from === null || from === "bench" || from === "test") {
      violations.push({
        file: source.file,
        specifier: "",
        target: "",
        message: `${source.file}: in no layer of the table; add its folder`,
      });
      continue;
    }
    for (const edge of relativeImports(source)) {
      if (isManifest(edge)) continue;
      const to = layerOf(edge.target);
      if (to === from || (to !== null && ALLOWED[from].includes(to))) continue;
      const allowed = ALLOWED[from].length > 0 ? `only ${ALLOWED[from].join(", ")}` : "nothing of the project";
      violations.push({
        ...edge,
        message: `${edge.file}: imports "${edge.specifier}" (${edge.target}), edge ${from} -> ${to ?? "outside every layer"}; ${from} may import ${allowed}`,
      });
    }
  }
  return violations;
}

function readTree(): SourceFile[] {
  const files: SourceFile[] = [];
  const walk = (dir: string) => {
    for (const entry of fs.readdirSync(path.join(ROOT, dir), { withFileTypes: true })) {
      const rel = `${dir}/${entry.name}`;
      if (entry.isDirectory()) walk(rel);
      else if (entry.name.endsWith(".ts")) files.push({ file: rel, text: fs.readFileSync(path.join(ROOT, rel), "utf8") });
    }
  };
  for (const dir of SCANNED) walk(dir);
  return files;
}

test("every relative import in src/, workers/ and config/ follows the layer order", () => {
  const tree = readTree();
  // A checker that finds nothing would pass anything: the tree has well over these many files and edges.
  assert.ok(tree.length > 30, `only ${tree.length} .ts files found under ${SCANNED.join(", ")} in ${ROOT}`);
  assert.ok(tree.flatMap(relativeImports).length > 80, "too few relative imports found: is the pattern broken?");
  const violations = check(tree);
  assert.equal(violations.length, 0, `imports against the layer order:\n  ${violations.map((v) => v.message).join("\n  ")}`);
});

test("self-check: fabricated edges against the order are reported, allowed ones are not", () => {
  const reported = (file: string, text: string) => check([{ file, text }]).map((v) => v.message);
  // The reverse edge, in each spelling of an import.
  for (const text of [
    'import { Ring } from "../front/ring";',
    'import "../front/ring";',
    'export { Ring } from "../front/ring";',
    'const { Ring } = require("../front/ring") as typeof import("../front/ring");',
    'const url = "http://example.com"; import type { Ring } from "../front/ring";',
  ]) {
    const found = reported("src/shared/x.ts", text);
    assert.ok(found.length > 0, `not reported: ${text}`);
    assert.match(found[0], /^src\/shared\/x\.ts: imports "\.\.\/front\/ring" \(src\/front\/ring\), edge src\/shared -> src\/front/);
  }
  assert.equal(reported("workers/records/x.ts", 'import { CopyWriter } from "../commit/copy-writer";').length, 1, "records -> commit");
  assert.equal(reported("src/front/x.ts", 'import "../../workers/ingest-task";').length, 1, "front -> workers");
  assert.equal(reported("src/commands/x.ts", 'require("../../bench/run");').length, 1, "commands -> bench");
  assert.equal(reported("src/cli.ts", 'require("../bench/run");').length, 1, "cli -> bench");
  assert.equal(reported("config/streams/x.ts", 'import "../../test/harness";').length, 1, "config -> test");
  assert.equal(reported("src/ops/x.ts", 'import "../storage/schema";').length, 1, "ops -> storage");
  assert.equal(reported("src/misc/x.ts", "").length, 1, "a folder outside the table");
  // Allowed, or not an edge at all.
  assert.deepEqual(reported("src/front/x.ts", 'import { ensureSchema } from "../storage/schema"; import "./ring";'), []);
  assert.deepEqual(reported("workers/commit/x.ts", 'import { escapeCopyText } from "../records/row-encoder";'), []);
  assert.deepEqual(reported("src/ops/x.ts", 'const v = require("../../../package.json").version;'), []);
  assert.deepEqual(reported("src/shared/x.ts", '// require("../front/ring")\n/* import "../front/ring"; */ import pg from "pg";'), []);
});
