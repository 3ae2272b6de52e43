// Adds one job the way a Node app does (BullMQ's own Queue.add), for the
// integration tests: node bullmq_add.js <name> '<data JSON>'.
const { Queue } = require("bullmq");

const connection = { url: process.env.REDIS_URL || "redis://127.0.0.1:6379" };
const queue = new Queue(process.env.BULL_QUEUE, { connection, prefix: process.env.BULL_PREFIX });
queue
  .add(process.argv[2], JSON.parse(process.argv[3]))
  .then(async (job) => {
    console.log(job.id);
    await queue.close();
  })
  .catch((e) => {
    console.error(e);
    process.exit(1);
  });
