import pino from "pino";

/**
 * JSON lines on stdout for journald. Secrets are redacted by key wherever they appear in a log object, so
 * a careless `log.info({ config })` cannot leak them.
 */
export const REDACTED_KEYS = [
  "databaseUrl",
  "connectionString",
  "password",
  "authorization",
  "token",
  "apiKey",
  "*.databaseUrl",
  "*.connectionString",
  "*.password",
  "*.authorization",
  "*.token",
  "*.apiKey",
];

export type Logger = pino.Logger;

export function createLogger(level: string, destination: pino.DestinationStream = pino.destination({ fd: 1, sync: false })): Logger {
  return pino(
    {
      level,
      base: { service: "ingestd", pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      redact: { paths: REDACTED_KEYS, censor: "[redacted]" },
      messageKey: "msg",
    },
    destination,
  );
}

/** Removes the password from a connection string before it is shown anywhere. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return "[unparseable url]";
  }
}
