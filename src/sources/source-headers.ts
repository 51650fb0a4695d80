/**
 * Request headers of a source, with `${NAME}` replaced from the environment at each run (docs/sources.md#secrets).
 * The values are secrets: they go into the request and nowhere else; errors name the header and the
 * variable, never a value.
 */
export class SourceConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SourceConfigError";
  }
}

export function resolveHeaders(headers: Record<string, string> | undefined, env: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, template] of Object.entries(headers ?? {})) {
    out[name] = template.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (_m, variable: string) => {
      const value = env[variable];
      if (value === undefined) throw new SourceConfigError(`header ${name}: environment variable ${variable} is not set`);
      return value;
    });
  }
  return out;
}
