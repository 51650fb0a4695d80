/**
 * A TCP proxy on loopback (node:net) for fault tests: forwards to a target port that can be changed (a
 * restarted daemon) and cuts every connection on demand, or after a number of bytes in either direction
 * (mid-frame, mid-ack).
 */
import net from "node:net";

export interface TcpProxy {
  port: number;
  /** Where new connections go. */
  target: number;
  /** Destroys every open connection at once. */
  cutAll(): void;
  /** Cuts each connection once `bytes` more bytes passed in that direction (then forwards normally). */
  cutAfter(direction: "up" | "down", bytes: number): void;
  /** Drops (true) or forwards (false) what passes in one direction from now on: bytes the peer never sees. */
  blackhole(direction: "up" | "down", on: boolean): void;
  /** Bytes forwarded so far, up (client to server) and down. */
  counts(): { up: number; down: number; connections: number; trapped: number };
  /** The connections open now stop passing anything to the client (a peer gone silent); new ones work. */
  freezeDown(): void;
  /** Takes back a cutAfter() that has not fired. */
  disarm(): void;
  /** Whether a cutAfter() trap is still waiting for its bytes. */
  armed(): boolean;
  close(): Promise<void>;
}

export async function startProxy(target: number): Promise<TcpProxy> {
  const pairs = new Set<[net.Socket, net.Socket]>();
  let up = 0;
  let down = 0;
  let connections = 0;
  let trapped = 0;
  let trap: { direction: "up" | "down"; left: number } | null = null;
  const dropping = { up: false, down: false };
  const frozen = new WeakSet<net.Socket>();
  const cut = (pair: [net.Socket, net.Socket]) => {
    pair[0].destroy();
    pair[1].destroy();
    pairs.delete(pair);
  };
  const server = net.createServer((client) => {
    connections++;
    const upstream = net.connect(proxy.target, "127.0.0.1");
    const pair: [net.Socket, net.Socket] = [client, upstream];
    pairs.add(pair);
    const forward = (from: net.Socket, to: net.Socket, direction: "up" | "down") =>
      from.on("data", (chunk: Buffer) => {
        if (dropping[direction] || (direction === "down" && frozen.has(to))) return;
        if (direction === "up") up += chunk.length;
        else down += chunk.length;
        if (trap !== null && trap.direction === direction) {
          if (chunk.length >= trap.left) {
            // Pass part of the chunk, then cut: the peer sees a frame or an ack broken off.
            to.write(chunk.subarray(0, trap.left));
            trap = null;
            trapped++;
            setImmediate(() => cut(pair));
            return;
          }
          trap.left -= chunk.length;
        }
        to.write(chunk);
      });
    forward(client, upstream, "up");
    forward(upstream, client, "down");
    for (const s of pair) {
      s.on("error", () => cut(pair));
      s.on("close", () => cut(pair));
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const proxy: TcpProxy = {
    port: (server.address() as net.AddressInfo).port,
    target,
    cutAll: () => {
      for (const pair of [...pairs]) cut(pair);
    },
    cutAfter: (direction, bytes) => {
      trap = { direction, left: Math.max(1, bytes) };
    },
    freezeDown: () => {
      for (const [client] of pairs) frozen.add(client);
    },
    blackhole: (direction, on) => {
      dropping[direction] = on;
    },
    counts: () => ({ up, down, connections, trapped }),
    armed: () => trap !== null,
    disarm: () => {
      trap = null;
    },
    close: async () => {
      proxy.cutAll();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  return proxy;
}
