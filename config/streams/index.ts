import type { StreamDefinition } from "../../src/shared/stream-definition";
import events from "./events";
import logs from "./logs";
import productEvents from "./product-events";
import countries from "./countries";
import { customer, lineitem, orders, part } from "./tpch";
import users from "./users";

/**
 * Every stream the daemon serves. To add one: write its record type and definition in a file beside
 * this one, list it here, and rebuild (`npm run build`) so typia compiles its validator.
 *
 * Order matters: within one group-commit transaction tables are written in this order, so a stream must
 * come after the streams it references (orders before lineitem).
 */
export const streams: readonly StreamDefinition[] = [events, logs, productEvents, users, countries, orders, customer, part, lineitem];

/** The line streams' entity names, in the order seed 004's clients know them (`entities` in /health). */
export const lineEntities: readonly string[] = [orders, lineitem, customer, part].map((s) => s.entity!);
