import type { StreamDefinition } from "../../src/stream-definition";
import events from "./events";

/**
 * Every stream the daemon serves. To add one: write its record type and definition in a file beside
 * this one, list it here, and rebuild (`npm run build`) so typia compiles its validator.
 */
export const streams: readonly StreamDefinition[] = [events];
