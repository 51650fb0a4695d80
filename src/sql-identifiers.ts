/**
 * SQL identifiers: table, column and schema names come from configuration and stream definitions only,
 * and are still quoted so a name can never be read as SQL.
 */
export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

export function qualifiedName(schema: string, name: string): string {
  return `${quoteIdent(schema)}.${quoteIdent(name)}`;
}

export function copyStatement(schema: string, table: string, columns: readonly string[]): string {
  return `COPY ${qualifiedName(schema, table)} (${columns.map(quoteIdent).join(", ")}) FROM STDIN`;
}
