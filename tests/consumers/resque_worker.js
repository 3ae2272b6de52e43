#!/usr/bin/env node
// A real node-resque worker used by sweeper's integration tests.
//
// It consumes jobs from Resque queues (the same Redis layout Ruby Resque
// uses) and appends one JSON line per successfully performed job to --out:
//   {"class": "...", "args": [...], "queue": "..."}
//
// Usage:
//   node resque_worker.js --queues q1[,q2] --classes A,B --out FILE
//        (--expect N | --idle-ms MS) [--redis-url URL] [--namespace NS]
//        [--poll-ms MS] [--timeout-ms MS] [--work-ms MS] [--hold-until FILE]
//
// --poll-ms is node-resque's `timeout`: the sleep after finding all queues empty
// (also its ping interval). --work-ms makes each job take that long, so a test
// can observe the worker's working_on key while a job is in flight.
// --hold-until FILE keeps each job in flight until FILE exists: a test that
// must see a running job releases it when it is done looking, however slow
// the machine.
//
// Exit codes: 0 done, all jobs succeeded; 1 bad usage; 2 Redis unreachable or
// a Redis error; 3 done, but at least one job failed (e.g. unknown class);
// 4 --timeout-ms elapsed before the exit condition was met.
"use strict";

const fs = require("node:fs");
const { parseArgs } = require("node:util");
const Redis = require("ioredis");
const { Worker } = require("node-resque");

const USAGE =
  "usage: resque_worker.js --queues Q[,Q..] --classes C[,C..] --out FILE " +
  "(--expect N | --idle-ms MS) [--redis-url URL] [--namespace NS] " +
  "[--poll-ms MS] [--timeout-ms MS] [--work-ms MS] [--hold-until FILE]";

function die(code, msg) {
  console.error(`resque_worker: ${msg}`);
  process.exit(code);
}

function list(s) {
  return (s || "").split(",").map((x) => x.trim()).filter(Boolean);
}

function int(name, s, dflt) {
  if (s === undefined) return dflt;
  const n = Number(s);
  if (!Number.isInteger(n) || n < 0) die(1, `--${name} must be a non-negative integer, got ${s}\n${USAGE}`);
  return n;
}

let opts;
try {
  opts = parseArgs({
    options: {
      "redis-url": { type: "string", default: process.env.REDIS_URL || "redis://127.0.0.1:6379/0" },
      namespace: { type: "string", default: process.env.RESQUE_NAMESPACE || "resque" },
      queues: { type: "string", default: process.env.QUEUES },
      classes: { type: "string", default: process.env.JOB_CLASSES },
      out: { type: "string", default: process.env.OUT_FILE },
      expect: { type: "string" },
      "idle-ms": { type: "string" },
      "poll-ms": { type: "string" },
      "timeout-ms": { type: "string" },
      "work-ms": { type: "string" },
      "hold-until": { type: "string" },
    },
  }).values;
} catch (e) {
  die(1, `${e.message}\n${USAGE}`);
}

const queues = list(opts.queues);
const classes = list(opts.classes);
const expect = int("expect", opts.expect, null);
const idleMs = int("idle-ms", opts["idle-ms"], null);
const pollMs = int("poll-ms", opts["poll-ms"], 100);
const timeoutMs = int("timeout-ms", opts["timeout-ms"], 30000); // 0 = none
const workMs = int("work-ms", opts["work-ms"], 0);
if (!queues.length || !classes.length || !opts.out) die(1, USAGE);
if (expect === null && idleMs === null) die(1, `give --expect and/or --idle-ms\n${USAGE}`);

async function main() {
  // Our own client so an unreachable Redis fails fast instead of retrying forever.
  const redis = new Redis(opts["redis-url"], {
    lazyConnect: true,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    connectTimeout: 3000,
  });
  let lastRedisError = null;
  redis.on("error", (e) => (lastRedisError = e)); // reported below / via worker errors
  try {
    await redis.connect();
    await redis.ping();
  } catch (e) {
    die(2, `cannot reach Redis at ${opts["redis-url"]}: ${(lastRedisError || e).message}`);
  }

  const jobs = {};
  const holdUntil = opts["hold-until"];
  const released = () =>
    new Promise((resolve) => {
      const check = () => (fs.existsSync(holdUntil) ? resolve() : setTimeout(check, 50));
      check();
    });
  const perform = async () => {
    await new Promise((resolve) => setTimeout(resolve, workMs));
    if (holdUntil) await released();
    return true;
  };
  for (const name of classes) jobs[name] = { perform };

  const worker = new Worker(
    { connection: { redis, namespace: opts.namespace }, queues, timeout: pollMs },
    jobs,
  );

  let handled = 0;
  let failed = 0;
  let lastActivity = Date.now();
  let finishing = false;

  async function finish(code, why) {
    if (finishing) return;
    finishing = true;
    console.error(`resque_worker: ${why} (succeeded=${handled - failed} failed=${failed})`);
    await worker.end().catch(() => {}); // unregisters from `workers`, deletes ping/started keys
    await redis.quit().catch(() => {});
    process.exit(code);
  }
  const doneCode = () => (failed > 0 ? 3 : 0);

  function jobHandled() {
    handled += 1;
    lastActivity = Date.now();
    if (expect !== null && handled >= expect) finish(doneCode(), `handled ${handled} job(s)`);
  }

  worker.on("success", (queue, job) => {
    const line = { class: job.class, args: job.args, queue };
    fs.appendFileSync(opts.out, JSON.stringify(line) + "\n");
    console.log(`resque_worker: performed ${JSON.stringify(line)}`);
    jobHandled();
  });
  worker.on("failure", (queue, job, err) => {
    failed += 1;
    console.error(
      `\n!!!!! resque_worker: JOB FAILED on queue ${queue}: ${err && err.message}\n` +
        `!!!!! payload: ${JSON.stringify(job)}\n` +
        `!!!!! (node-resque pushed it to ${opts.namespace}:failed)\n`,
    );
    jobHandled();
  });
  worker.on("error", (err, queue) => {
    console.error(`resque_worker: worker error${queue ? ` on ${queue}` : ""}: ${err && err.message}`);
    finish(2, "stopping after a worker error");
  });

  console.error(
    `resque_worker: ${worker.name} starting on ${opts.namespace}:queue:{${queues.join(",")}} ` +
      `classes=${classes.join(",")} poll=${pollMs}ms`,
  );
  try {
    await worker.connect();
    await worker.start();
  } catch (e) {
    die(2, `failed to start node-resque worker: ${e.message}`);
  }

  if (idleMs !== null) {
    setInterval(async () => {
      if (finishing || worker.working || Date.now() - lastActivity < idleMs) return;
      try {
        const lens = await Promise.all(queues.map((q) => redis.llen(`${opts.namespace}:queue:${q}`)));
        if (lens.some((n) => n > 0)) lastActivity = Date.now();
        else finish(doneCode(), `queues idle for ${idleMs}ms`);
      } catch (e) {
        finish(2, `redis error while checking queue lengths: ${e.message}`);
      }
    }, Math.min(50, idleMs || 50)).unref();
  }
  if (timeoutMs > 0) {
    setTimeout(() => finish(4, `TIMEOUT after ${timeoutMs}ms, exit condition not met`), timeoutMs).unref();
  }
}

main();
