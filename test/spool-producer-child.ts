/**
 * A producer process for the spool test: sends records `${TAG}-${i}` for i in [FROM, TO) through the client
 * with a spool, prints `acked <n>` as outcomes arrive and `done <json>` at the end. Killed and started
 * again by the test (with FROM = TO: it only resends what its spool holds).
 */
import { Producer } from "../src/client";

async function main(): Promise<void> {
  const env = process.env;
  const from = Number(env.FROM);
  const to = Number(env.TO);
  const producer = new Producer({
    url: env.URL!,
    stream: "logs",
    producer: env.PRODUCER!,
    spoolDir: env.SPOOL!,
    maxBatchRecords: 100,
    maxBufferedRecords: 500,
    initialDelayMs: 50,
    maxDelayMs: 500,
    onEvent: (e) => process.stdout.write(`event ${JSON.stringify(e)}\n`),
  });
  let acked = 0;
  let highest = -1;
  const outcomes: Array<Promise<unknown>> = [];
  for (let i = from; i < to; i++) {
    const { outcome } = await producer.enqueue({ service_name: "spool", severity: "INFO", message: `${env.TAG}-${i}` });
    outcomes.push(
      outcome.then(() => {
        acked++;
        highest = Math.max(highest, i);
        if (acked % 100 === 0) process.stdout.write(`acked ${acked} ${highest}\n`);
      }),
    );
  }
  await Promise.all(outcomes);
  await producer.close();
  process.stdout.write(`done ${JSON.stringify({ acked, highest })}\n`);
}

main().catch((err) => {
  process.stderr.write(`${(err as Error).stack}\n`);
  process.exit(2);
});
