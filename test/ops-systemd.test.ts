/**
 * systemd integration, as far as a machine without systemd as PID 1 can check it:
 *  - `systemd-analyze verify` parses the unit with no finding at all (its exit status alone ignores unknown
 *    keys and bad values, so the output must be empty too), and ExecStart's command is the real CLI;
 *  - the readiness protocol: with NOTIFY_SOCKET set, the daemon sends READY=1 once it answers, and
 *    STOPPING=1 on SIGTERM, received here on a real unix datagram socket the way systemd receives them.
 * Not checked here: that systemd applies the sandboxing at run time (that needs a booted systemd).
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import { after, before, test } from "node:test";
import { useFixture } from "./fixture";
import { ROOT } from "./harness";
import { configEnv, requireTool } from "./ops-tools";

const UNIT = path.join(ROOT, "systemd/ingestd.service");
const ENV_EXAMPLE = path.join(ROOT, "systemd/ingestd.env.example");
let dir: string;

before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "ingestd-systemd-"));
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

/** The unit with its install paths mapped onto this checkout and this node binary. */
function localUnit(text = fs.readFileSync(UNIT, "utf8")): string {
  return text.replaceAll("/usr/bin/node", process.execPath).replaceAll("/opt/ingestd", ROOT);
}

function verify(analyze: string, unitText: string, name = "ingestd.service") {
  const file = path.join(dir, name);
  fs.writeFileSync(file, unitText);
  const r = spawnSync(analyze, ["verify", "--man=no", file], { encoding: "utf8", timeout: 60_000 });
  return { code: r.status, output: (r.stdout + r.stderr).trim() };
}

function directives(text: string): Map<string, string[]> {
  const map = new Map<string, string[]>();
  for (const line of text.split("\n")) {
    const m = /^([A-Za-z]+)=(.*)$/.exec(line.trim());
    if (m) map.set(m[1], [...(map.get(m[1]) ?? []), m[2]]);
  }
  return map;
}

test("systemd-analyze verify passes on the unit with no findings", (t) => {
  const analyze = requireTool(t, "systemd-analyze", "apt-get install systemd");
  if (!analyze) return;
  const result = verify(analyze, localUnit());
  assert.equal(result.code, 0, result.output);
  assert.equal(result.output, "", "no warnings either");

  // Control: the same check notices a misspelt directive and a binary that does not exist, so an empty
  // output above means something.
  const typo = verify(analyze, localUnit().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"), "typo.service");
  assert.match(typo.output, /Unknown key 'NoNewPrivilege'/);
  const missing = verify(analyze, localUnit().replace(`ExecStart=${process.execPath}`, "ExecStart=/nonexistent/node"), "missing.service");
  assert.notEqual(missing.code, 0);
});

test("the unit's ExecStart runs this CLI; hardening, limits and stop timeout are as documented", () => {
  const text = fs.readFileSync(UNIT, "utf8");
  const d = directives(text);
  const execStart = d.get("ExecStart")![0].split(/\s+/);
  assert.deepEqual(execStart, ["/usr/bin/node", "--max-semi-space-size=4", "/opt/ingestd/dist/src/cli.js", "serve"]);
  // The same command line on this checkout, asked to check its configuration instead of serving.
  const local = localUnit(`ExecStart=${execStart.join(" ")}`)
    .slice("ExecStart=".length)
    .split(" ");
  const r = spawnSync(local[0], [...local.slice(1, -1), "check-config"], { encoding: "utf8", cwd: ROOT, env: configEnv() });
  assert.equal(r.status, 0, r.stderr);

  for (const [key, value] of [
    ["Type", "notify"],
    ["NotifyAccess", "all"],
    ["DynamicUser", "yes"],
    ["NoNewPrivileges", "yes"],
    ["ProtectSystem", "strict"],
    ["ProtectHome", "yes"],
    ["PrivateTmp", "yes"],
    ["StateDirectory", "ingestd"],
    ["Restart", "on-failure"],
    ["KillMode", "mixed"],
    ["LimitNOFILE", "1048576"],
    ["RestartPreventExitStatus", "78"],
    ["EnvironmentFile", "/etc/ingestd/ingestd.env"],
    ["ExecReload", "/bin/kill -HUP $MAINPID"],
  ]) {
    assert.deepEqual(d.get(key), [value], key);
  }
  assert.ok(!d.has("ReadWritePaths"), "the state directory is the only writable path");
  // The drain (stopTimeoutMs) must finish before systemd's SIGKILL.
  const stopTimeoutMs = JSON.parse(fs.readFileSync(path.join(ROOT, "config/ingestd.json"), "utf8")).stopTimeoutMs;
  const stopSec = Number(/^(\d+)s?$/.exec(d.get("TimeoutStopSec")![0])![1]);
  assert.ok(stopSec * 1000 >= stopTimeoutMs + 5000, `TimeoutStopSec ${stopSec}s leaves room after a ${stopTimeoutMs} ms drain`);
});

test("the example environment file is a valid configuration", () => {
  const env: Record<string, string> = {};
  for (const line of fs.readFileSync(ENV_EXAMPLE, "utf8").split("\n")) {
    // Active lines, plus the commented-out optional ones that need no files of their own.
    const m = /^(?:#(?=HLOG_PATH|RETENTION_MONTHS))?([A-Z_]+)=(.*)$/.exec(line);
    if (m) env[m[1]] = m[2].replaceAll("/var/lib/ingestd", dir);
  }
  assert.ok(env.DATABASE_URL && env.PORT && env.DATA_DIR, "the example sets the main keys");
  const stopTimeoutMs = Number(env.STOP_TIMEOUT_MS);
  const stopSec = Number(/TimeoutStopSec=(\d+)/.exec(fs.readFileSync(UNIT, "utf8"))![1]);
  assert.ok(stopSec * 1000 > stopTimeoutMs, "example drain fits the unit's stop timeout");
  const r = spawnSync(process.execPath, [path.join(ROOT, "dist/src/cli.js"), "check-config"], { encoding: "utf8", env: configEnv(env) });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /listen 0\.0\.0\.0:8080/);
  assert.match(r.stdout, /latency log: .*latency\.hlog/);
});

const TEMPLATE = path.join(ROOT, "systemd/ingestd@.service");
const CLUSTER_ENV = path.join(ROOT, "systemd/ingestd-cluster.env.example");

test("the template unit ingestd@.service: systemd-analyze verify finds nothing for an instance; the port is the instance name", (t) => {
  const analyze = requireTool(t, "systemd-analyze", "apt-get install systemd");
  if (!analyze) return;
  const text = fs.readFileSync(TEMPLATE, "utf8");
  const result = verify(analyze, localUnit(text), "ingestd@8081.service");
  assert.equal(result.code, 0, result.output);
  assert.equal(result.output, "", "no warnings either");
  const typo = verify(analyze, localUnit(text).replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"), "ingestd@8082.service");
  assert.match(typo.output, /Unknown key 'NoNewPrivilege'/, "the instance file is really parsed");

  const d = directives(text);
  assert.deepEqual(d.get("Environment"), ["NODE_ENV=production PORT=%i"]);
  assert.deepEqual(d.get("EnvironmentFile"), ["/etc/ingestd/ingestd-cluster.env"]);
  assert.deepEqual(d.get("StateDirectory"), ["ingestd-%i"], "each instance its own state directory");
  // The same hardening as the single unit: only the lines that name the instance or its timing differ.
  const single = directives(fs.readFileSync(UNIT, "utf8"));
  for (const [key, values] of single) {
    if (["Description", "EnvironmentFile", "Environment", "WorkingDirectory", "StateDirectory", "TimeoutStopSec"].includes(key)) continue;
    assert.deepEqual(d.get(key), values, key);
  }
});

test("the cluster environment example: valid, no PORT (the instance sets it), a drain delay and drain that fit the template's stop timeout", () => {
  const env: Record<string, string> = {};
  for (const line of fs.readFileSync(CLUSTER_ENV, "utf8").split("\n")) {
    const m = /^([A-Z_]+)=(.*)$/.exec(line);
    if (m) env[m[1]] = m[2];
  }
  assert.ok(env.DATABASE_URL, "several daemons need one PostgreSQL: DATABASE_URL is set");
  assert.equal(env.PORT, undefined, "an EnvironmentFile= PORT would override the instance's");
  const stopSec = Number(/^TimeoutStopSec=(\d+)s?$/m.exec(fs.readFileSync(TEMPLATE, "utf8"))![1]);
  const drainDelay = Number(env.DRAIN_DELAY_MS);
  assert.ok(stopSec * 1000 >= drainDelay + Number(env.STOP_TIMEOUT_MS) + 5000, `TimeoutStopSec ${stopSec}s covers delay and drain`);
  // The balancer must have taken the daemon out before the delay ends: fall x inter plus one check.
  const cfg = fs.readFileSync(path.join(ROOT, "systemd/haproxy/ingestd.cfg"), "utf8");
  const m = /default-server check inter (\d+)s fall (\d+)/.exec(cfg)!;
  assert.ok(drainDelay > (Number(m[2]) + 1) * Number(m[1]) * 1000, `DRAIN_DELAY_MS ${drainDelay} outlasts HAProxy's checks`);
  const r = spawnSync(process.execPath, [path.join(ROOT, "dist/src/cli.js"), "check-config"], {
    encoding: "utf8",
    env: configEnv({ ...env, PORT: "8081" }),
  });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /listen 127\.0\.0\.1:8081/);
});

/** Receives sd_notify datagrams as systemd does (closing the barrier fds systemd-notify waits on). */
const RECEIVER = `
import array, json, os, socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
print(json.dumps({"bound": True}), flush=True)
while True:
    msg, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(16 * 4) + socket.CMSG_SPACE(12))
    pid = None
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
            for fd in fds:
                os.close(fd)
        elif level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack("iII", data[:12])[0]
    print(json.dumps({"message": msg.decode(), "pid": pid}), flush=True)
`;

/**
 * Nothing started up front: the readiness test starts its database and daemon through fx once it knows the
 * tools it needs are there. A failed assertion must not leave the daemon running (it would keep this file
 * from finishing): after() kills it.
 */
const fx = useFixture({ stopSignal: "SIGKILL" });

test("readiness: READY=1 once the daemon answers, STOPPING=1 on SIGTERM, over NOTIFY_SOCKET", async (t) => {
  const python = requireTool(t, "python3", "apt-get install python3");
  if (!python) return;
  if (!requireTool(t, "systemd-notify", "apt-get install systemd")) return;
  const socketPath = path.join(dir, "notify.sock");
  const receiver = spawn(python, ["-c", RECEIVER, socketPath], { stdio: ["ignore", "pipe", "inherit"] });
  const messages: Array<{ message: string; pid: number | null; at: number }> = [];
  const waiters: Array<() => void> = [];
  readline.createInterface({ input: receiver.stdout! }).on("line", (line) => {
    const entry = JSON.parse(line);
    if (entry.message !== undefined) messages.push({ ...entry, at: Date.now() });
    for (const w of waiters.splice(0)) w();
  });
  const waitFor = async (pred: () => boolean, what: string, ms = 20_000) => {
    const deadline = Date.now() + ms;
    while (!pred()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; got ${JSON.stringify(messages)}`);
      await new Promise<void>((r) => {
        waiters.push(r);
        setTimeout(r, 100);
      });
    }
  };
  try {
    await waitFor(() => fs.existsSync(socketPath), "the receiver's socket");
    const db = await fx.startDb();
    const daemon = await fx.startDaemon({ databaseUrl: db.url, env: { NOTIFY_SOCKET: socketPath } });
    await waitFor(() => messages.some((m) => m.message.includes("READY=1")), "READY=1");
    // As root, systemd-notify sends with its parent's pid (ours); unprivileged, as under the unit's
    // DynamicUser, with its own: hence NotifyAccess=all in the unit.
    const ready = messages.find((m) => m.message.includes("READY=1"))!;
    assert.match(ready.message, new RegExp(`STATUS=listening on 127\\.0\\.0\\.1:${daemon.port}`));
    // Ready means ready: the daemon already answers.
    const health = await fetch(`${daemon.base}/health`);
    assert.equal(health.status, 200);

    const { code } = await daemon.stop();
    assert.equal(code, 0);
    await waitFor(() => messages.some((m) => m.message.includes("STOPPING=1")), "STOPPING=1", 5_000);
    assert.equal(messages.filter((m) => m.message.includes("READY=1")).length, 1, "ready once");
  } finally {
    receiver.kill();
  }
});
