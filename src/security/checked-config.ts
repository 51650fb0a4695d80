/**
 * The configuration as every command loads it: the file and environment (ops/config.ts), then the security
 * files it names. A bad certificate or key is named here rather than left to uWS's "App construction
 * failed", and a bad keys file is a configuration error (exit 78) for check-config exactly as for serve.
 */
import { streams } from "../../config/streams";
import { ConfigError, ignoreUnknownStreams, loadConfig, sourceStreams, type IngestdConfig } from "../ops/config";
import { ApiKeysError, readKeyEntries, streamCatalog } from "./api-keys";
import { tlsFilesProblem } from "./tls-files";

export function loadCheckedConfig(env: NodeJS.ProcessEnv = process.env): IngestdConfig {
  const cfg = loadConfig(env);
  ignoreUnknownStreams(cfg, streams);
  sourceStreams(cfg, streams);
  if (cfg.tlsCert !== null && cfg.tlsKey !== null) {
    const problem = tlsFilesProblem(cfg.tlsCert, cfg.tlsKey);
    if (problem !== null) throw new ConfigError(problem);
  }
  if (cfg.apiKeysFile !== null || env.INGESTD_API_KEYS) {
    try {
      readKeyEntries(cfg.apiKeysFile, env.INGESTD_API_KEYS, streamCatalog());
    } catch (err) {
      throw err instanceof ApiKeysError ? new ConfigError(err.message) : err;
    }
  }
  return cfg;
}
