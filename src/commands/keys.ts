/** `ingestd keys ...`: mints API keys; the work and its own --help are in src/security/api-keys.ts. */
import { ApiKeysError, runKeysCommand, streamCatalog } from "../security/api-keys";
import { UsageError } from "./usage-error";

export async function keysCommand(argv: string[]): Promise<number> {
  try {
    return runKeysCommand(argv, process.stdout, streamCatalog());
  } catch (err) {
    if (err instanceof ApiKeysError) throw new UsageError(err.message);
    throw err;
  }
}
