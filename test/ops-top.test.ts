/**
 * `ingestd top` as an operator runs it: in a pseudo-terminal (util-linux `script`), against a live daemon
 * with traffic, quit with q; and the one-shot and unreachable-daemon cases.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { test } from "node:test";
import { useDaemon } from "./fixture";
import { CLI } from "./harness";
import { backgroundTraffic, requireTool, sleep } from "./ops-tools";

const fx = useDaemon();

const stripAnsi = (s: string) => s.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "");
const shellQuote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** The events/s figures of every frame drawn so far. */
function eventRates(screen: string): number[] {
  return [...stripAnsi(screen).matchAll(/^events\/s\s+([\d,]+)/gm)].map((m) => Number(m[1].replace(/,/g, "")));
}

test("top in a pseudo-terminal shows non-zero throughput and per-stage percentiles, and exits on q", async (t) => {
  const script = requireTool(t, "script", "apt-get install bsdutils (util-linux)");
  if (!script) return;
  const traffic = backgroundTraffic(fx.daemon.base, "top", 20_000);
  // `script` gives the command a pty: top sees a terminal on stdin and stdout, as over SSH.
  const command = `stty cols 120 rows 40; exec ${shellQuote(process.execPath)} ${shellQuote(CLI)} top --url ${fx.daemon.base}`;
  const child = spawn(script, ["-qfec", command, "/dev/null"], { stdio: ["pipe", "pipe", "pipe"], env: { ...process.env, TERM: "xterm" } });
  let screen = "";
  child.stdout.setEncoding("utf8");
  child.stdout.on("data", (chunk: string) => (screen += chunk));
  child.stderr.on("data", (chunk: Buffer) => (screen += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  try {
    // Rates need two polls, and percentiles a completed interval with traffic: up to 15 s on a loaded
    // machine, then quit as an operator does.
    const deadline = Date.now() + 15_000;
    const ackRow = /^ack\s+events\s+[\d,]+\s/m;
    while (Date.now() < deadline && !(eventRates(screen).some((r) => r > 0) && ackRow.test(stripAnsi(screen)))) await sleep(200);
    await sleep(300); // let the frame finish drawing
    child.stdin.write("q");
    const code = await Promise.race([exited, sleep(5_000).then(() => "timeout" as const)]);
    assert.equal(code, 0, `top exits 0 on q within 5 s; screen:\n${stripAnsi(screen).slice(-3000)}`);
  } finally {
    child.kill("SIGKILL");
    const sent = await traffic.stop();
    assert.ok(sent > 0, "traffic was sent");
  }

  const rates = eventRates(screen);
  assert.ok(
    rates.some((r) => r > 0),
    `a frame with non-zero events/s: ${rates}\n${stripAnsi(screen).slice(-3000)}`,
  );
  const text = stripAnsi(screen);
  assert.match(text, /^database connected/m);
  assert.match(text, /^ring\s+[\d.]+ [KM]iB \/ 64\.0 MiB/m);
  assert.match(text, /^tasks in flight \d+\s+workers 2 busy \d+%\s+ws connections 0/m);
  for (const stage of ["receive", "validate", "commit", "ack"]) {
    assert.match(text, new RegExp(`^${stage}\\s+events\\s+[\\d,]+\\s+[\\d.,]+\\s+[\\d.,]+\\s+[\\d.,]+\\s+[\\d.,]+`, "m"), `${stage} row`);
  }
  // Alternate screen entered, then left with the cursor shown again: the terminal is restored.
  assert.ok(screen.includes("\x1b[?1049h"), "entered the alternate screen");
  const tail = screen.slice(screen.lastIndexOf("\x1b[J"));
  assert.ok(tail.includes("\x1b[?25h") && tail.includes("\x1b[?1049l"), `restored after the last frame: ${JSON.stringify(tail)}`);
});

test("top --once prints one plain frame (no escapes) and exits 0", async () => {
  const traffic = backgroundTraffic(fx.daemon.base, "once", 10_000);
  let out = "";
  let code: number | null;
  try {
    await sleep(500);
    const child = spawn(process.execPath, [CLI, "top", "--once", "--url", fx.daemon.base], { stdio: ["ignore", "pipe", "inherit"] });
    child.stdout.setEncoding("utf8");
    child.stdout.on("data", (c: string) => (out += c));
    code = await new Promise((resolve) => child.on("exit", resolve));
  } finally {
    await traffic.stop();
  }
  assert.equal(code, 0, out);
  assert.ok(!out.includes("\x1b"), "no escape sequences when not interactive");
  assert.match(out, /^ingestd top {2}http:\/\/127\.0\.0\.1:\d+ {2}v\d+\.\d+\.\d+/);
  assert.ok(eventRates(out)[0] > 0, out);
  assert.doesNotMatch(out, /q or Ctrl-C/);
});

test("top against a daemon that is not there says so, keeps retrying, and still quits on Ctrl-C", async (t) => {
  const script = requireTool(t, "script", "apt-get install bsdutils (util-linux)");
  if (!script) return;
  const nowhere = "http://127.0.0.1:1"; // nothing listens on port 1
  const once = spawn(process.execPath, [CLI, "top", "--once", "--url", nowhere], { stdio: ["ignore", "pipe", "inherit"] });
  let out = "";
  once.stdout.setEncoding("utf8");
  once.stdout.on("data", (c: string) => (out += c));
  assert.equal(await new Promise((resolve) => once.on("exit", resolve)), 1);
  assert.match(out, /cannot reach the daemon: ECONNREFUSED/);

  const child = spawn(script, ["-qfec", `exec ${shellQuote(process.execPath)} ${shellQuote(CLI)} top --url ${nowhere}`, "/dev/null"], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  let screen = "";
  child.stdout.setEncoding("utf8");
  child.stdout.on("data", (c: string) => (screen += c));
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  try {
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline && (stripAnsi(screen).match(/cannot reach the daemon/g) ?? []).length < 2) await sleep(100);
    assert.ok((stripAnsi(screen).match(/cannot reach the daemon: ECONNREFUSED \(retrying every 1s\)/g) ?? []).length >= 2, "retried");
    // In raw mode Ctrl-C reaches top as the byte 0x03 (the pty does not turn it into SIGINT).
    child.stdin.write("\x03");
    assert.equal(await Promise.race([exited, sleep(5_000).then(() => "timeout")]), 0);
    assert.ok(screen.endsWith("\x1b[?25h\x1b[?1049l"), "terminal restored");
  } finally {
    child.kill("SIGKILL");
  }
});
