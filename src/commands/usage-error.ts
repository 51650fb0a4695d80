/** Exit status for a command line that cannot be acted on (sysexits.h EX_USAGE). */
export const EX_USAGE = 64;

/** A bad command line: src/cli.ts prints the message and exits EX_USAGE. Every command throws this one. */
export class UsageError extends Error {}
