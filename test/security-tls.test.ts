/**
 * TLS (docs/security.md, issue 6 item 7): with TLS_CERT / TLS_KEY the daemon serves HTTPS and WSS through
 * uWebSockets.js SSLApp. The certificate is made by the test with openssl; clients verify it against that
 * certificate as their CA (not rejectUnauthorized: false), so the handshake and the name check are real.
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { after, test } from "node:test";
import { Agent, fetch as undiciFetch } from "undici";
import { useDaemon } from "./fixture";
import { CLI, ROOT, event, waitFor } from "./harness";
import { connectWs, keysFileJson, logEntries, newKey, tempDir } from "./security-helpers";

/** A self-signed certificate with SANs, so a client connecting to 127.0.0.1 verifies the name too. */
function makeCert(certFile: string, keyFile: string): void {
  try {
    execFileSync(
      "openssl",
      [
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-keyout",
        keyFile,
        "-out",
        certFile,
      ],
      { stdio: "ignore" },
    );
  } catch (err) {
    throw new Error(`openssl could not make a test certificate (Debian: apt-get install openssl): ${(err as Error).message}`);
  }
}

let dir: string;
/** The certificate: clients trust it as their CA. */
let ca: Buffer;
let agent: Agent;
const key = newKey("tls-producer", ["events"]);

/** A database, and a daemon serving HTTPS / WSS with a certificate and a keys file made in a temporary directory. */
const fx = useDaemon({
  env: () => {
    dir = tempDir("ingestd-sec-tls-");
    const certFile = path.join(dir, "cert.pem");
    const keyFile = path.join(dir, "key.pem");
    makeCert(certFile, keyFile);
    ca = fs.readFileSync(certFile);
    const keysFile = path.join(dir, "keys.json");
    fs.writeFileSync(keysFile, keysFileJson([key]));
    agent = new Agent({ connect: { ca } });
    return { TLS_CERT: certFile, TLS_KEY: keyFile, API_KEYS_FILE: keysFile };
  },
});
fx.teardown(() => agent?.close());
after(() => {
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

const https = () => `https://127.0.0.1:${fx.daemon.port}`;

test("the daemon says it listens on https", () => {
  const line = logEntries(fx.daemon.output).find((e) => typeof e.msg === "string" && e.msg.startsWith("ingestd listening"));
  assert.equal(line.tls, true);
  assert.match(line.msg, /^ingestd listening on https:\/\//);
});

test("HTTPS ingest lands rows (keys checked over TLS too)", async () => {
  const res = await undiciFetch(`${https()}/v1/streams/events/events`, {
    method: "POST",
    body: JSON.stringify([event("tls-http-1"), event("tls-http-2")]),
    headers: { "content-type": "application/json", authorization: `Bearer ${key.token}` },
    dispatcher: agent,
  });
  const body = (await res.json()) as any;
  assert.equal(res.status, 200, JSON.stringify(body));
  assert.equal(body.accepted, 2);
  const unauth = await undiciFetch(`${https()}/v1/streams/events/events`, {
    method: "POST",
    body: JSON.stringify(event("tls-http-3")),
    headers: { "content-type": "application/json" },
    dispatcher: agent,
  });
  assert.equal(unauth.status, 401);
  await unauth.text();
  const health = await undiciFetch(`${https()}/health`, { dispatcher: agent });
  assert.equal(health.status, 200);
  await health.text();
  const rows = await fx.db.query("SELECT event_id FROM events WHERE event_id LIKE 'tls-http-%' ORDER BY event_id");
  assert.deepEqual(
    rows.rows.map((r) => r.event_id),
    ["tls-http-1", "tls-http-2"],
  );
});

test("WSS ingest lands rows, with the key in a header or in ?token=", async () => {
  const viaHeader = await connectWs(`wss://127.0.0.1:${fx.daemon.port}/v1/ws?stream=events`, { ca, headers: { "x-api-key": key.token } });
  viaHeader.socket.send(JSON.stringify([event("tls-ws-1"), event("tls-ws-2")]));
  const viaQuery = await connectWs(`wss://127.0.0.1:${fx.daemon.port}/v1/ws?stream=events&token=${key.token}`, { ca });
  viaQuery.socket.send(JSON.stringify(event("tls-ws-3")));
  assert.equal((await viaHeader.waitForAcks(1))[0].accepted, 2);
  assert.equal((await viaQuery.waitForAcks(1))[0].accepted, 1);
  await assert.rejects(connectWs(`wss://127.0.0.1:${fx.daemon.port}/v1/ws?stream=events`, { ca }), (err: any) => err.status === 401);
  viaHeader.socket.close();
  viaQuery.socket.close();
  const rows = await fx.db.query("SELECT event_id FROM events WHERE event_id LIKE 'tls-ws-%' ORDER BY event_id");
  assert.deepEqual(
    rows.rows.map((r) => r.event_id),
    ["tls-ws-1", "tls-ws-2", "tls-ws-3"],
  );
});

test("a client that does not trust the certificate is refused, and plain HTTP gets no answer", async () => {
  const untrusting = new Agent();
  await assert.rejects(undiciFetch(`${https()}/health`, { dispatcher: untrusting }), (err: any) =>
    /SELF_SIGNED|CERT/.test(String(err?.cause?.code)),
  );
  await untrusting.close();
  // Plain HTTP on the TLS port: the server never answers in clear text.
  const reply = await new Promise<string>((resolve) => {
    const socket = net.connect(fx.daemon.port, "127.0.0.1");
    let text = "";
    socket.setEncoding("latin1");
    socket.on("data", (c: string) => (text += c));
    socket.on("error", () => resolve(text));
    socket.on("close", () => resolve(text));
    socket.on("connect", () => socket.write("GET /health HTTP/1.1\r\nHost: x\r\n\r\n"));
    setTimeout(() => socket.destroy(), 2000);
  });
  assert.ok(!reply.startsWith("HTTP/1.1 200"), `clear-text answer: ${JSON.stringify(reply.slice(0, 80))}`);
  // The daemon is unharmed by that.
  await waitFor("health over TLS", async () => {
    const res = await undiciFetch(`${https()}/health`, { dispatcher: agent });
    await res.text();
    return res.status === 200;
  });
});

test("an unusable certificate or key is a configuration error (exit 78) that names it", () => {
  const other = path.join(dir, "other");
  fs.mkdirSync(other);
  makeCert(path.join(other, "cert.pem"), path.join(other, "key.pem"));
  fs.writeFileSync(path.join(other, "garbage.pem"), "not a certificate\n");
  const cases: Array<[cert: string, key: string, expect: RegExp]> = [
    [path.join(dir, "cert.pem"), path.join(other, "key.pem"), /does not belong to the certificate/],
    [path.join(other, "garbage.pem"), path.join(dir, "key.pem"), /tlsCert: .* is not a readable PEM certificate/],
    [path.join(dir, "cert.pem"), path.join(other, "garbage.pem"), /tlsKey: .* is not a readable PEM private key/],
  ];
  for (const [cert, keyFile, expect] of cases) {
    const run = spawnSync(process.execPath, [CLI, "check-config"], {
      cwd: ROOT,
      env: { ...process.env, TLS_CERT: cert, TLS_KEY: keyFile },
      encoding: "utf8",
    });
    assert.equal(run.status, 78, run.stderr);
    assert.match(run.stderr, expect);
    assert.ok(!run.stderr.includes("PRIVATE KEY"), "no key material in the message");
  }
});
