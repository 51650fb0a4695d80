/**
 * Loads the native uWebSockets.js binary directly. The npm build in use falls back to a slow pure-JS
 * emulation when the binary does not load; a daemon sized for 100k events/s must refuse that instead.
 */
import path from "node:path";
import type * as UWS from "uWebSockets.js";

export type { HttpRequest, HttpResponse, TemplatedApp, WebSocket, us_listen_socket } from "uWebSockets.js";

export class NativeUwsUnavailable extends Error {}

function loadNative(): typeof UWS {
  const pkgDir = path.dirname(require.resolve("uWebSockets.js/package.json"));
  const binary = path.join(pkgDir, "binaries", `uws_${process.platform}_${process.arch}_${process.versions.modules}.node`);
  try {
    return require(binary) as typeof UWS;
  } catch (err) {
    throw new NativeUwsUnavailable(
      `ingestd needs the native uWebSockets.js binary and will not run on the slow JavaScript fallback.\n` +
        `Tried ${binary} (Node ${process.version}, ABI ${process.versions.modules}, ${process.platform}-${process.arch}):\n` +
        `  ${(err as Error).message}\n` +
        `Use Node.js 20 on linux-x64 with glibc >= 2.36, or a uWebSockets.js build for this platform.`,
    );
  }
}

export const uws = loadNative();
