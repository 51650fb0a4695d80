/** Dotted paths into a JSON response (`data.countries.edges`, `items.0.id`); "" is the value itself. */
export function atPath(value: unknown, path: string): unknown {
  if (path === "") return value;
  let node = value;
  for (const part of path.split(".")) {
    if (node === null || typeof node !== "object") return undefined;
    node = (node as Record<string, unknown>)[part];
  }
  return node;
}
