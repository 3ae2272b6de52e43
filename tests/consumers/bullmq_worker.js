// A Node app's BullMQ worker, for the integration tests. Processes jobs of
// queue $BULL_QUEUE (prefix $BULL_PREFIX) and appends, per job, what it got
// to $PROBE_OUT as one JSON line. Prints "ready" once it is waiting for jobs;
// exits after $BULL_JOBS jobs completed.
const fs = require("node:fs");
const { Worker } = require("bullmq");

const connection = { url: process.env.REDIS_URL || "redis://127.0.0.1:6379" };
const want = Number(process.env.BULL_JOBS || "1");
let done = 0;
const worker = new Worker(
  process.env.BULL_QUEUE,
  async (job) => {
    fs.appendFileSync(
      process.env.PROBE_OUT,
      JSON.stringify({
        id: job.id,
        name: job.name,
        data: job.data,
        opts: job.opts,
        timestamp: job.timestamp,
        processedOn: job.processedOn,
        attemptsMade: job.attemptsMade,
      }) + "\n",
    );
    return { ok: true };
  },
  { connection, prefix: process.env.BULL_PREFIX, concurrency: 1 },
);
worker.on("completed", async () => {
  done += 1;
  if (done >= want) {
    // Let BullMQ finish writing the completion, then stop.
    setTimeout(async () => {
      await worker.close();
      process.exit(0);
    }, 200);
  }
});
worker.on("failed", (job, err) => {
  console.error(`failed ${job && job.id}: ${err && err.message}`);
});
worker.waitUntilReady().then(() => console.log("ready"));
