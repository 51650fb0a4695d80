/** `ingestd/client`: the producer client (README "Producer client"). */
export { Producer, ProducerError, type ProducerEvent, type ProducerOptions, type RecordOutcome } from "./producer";
export type { RecordError } from "../shared/task-protocol";
