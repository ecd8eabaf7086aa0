// A real BullMQ worker whose jobs sleep for job.data.seconds. Prints one JSON line per event:
// ready (with the worker's id, the prefix of every lock token it writes), active, completed.
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { Worker, bullmqVersion, connection, say } from './engine.mjs';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    name: { type: 'string' },
    'lock-duration': { type: 'string', default: '30000' },
    'stalled-interval': { type: 'string', default: '30000' },
    'max-stalled-count': { type: 'string', default: '1' },
    concurrency: { type: 'string', default: '1' },
  },
});
const [redisUrl, queueName] = positionals;

async function sleepJob(job) {
  say('active', { jobId: job.id, token: job.token });
  await sleep(Number(job.data.seconds ?? 0) * 1000);
  return 'done';
}

const worker = new Worker(queueName, sleepJob, {
  connection: connection(redisUrl),
  name: values.name,
  lockDuration: Number(values['lock-duration']),
  stalledInterval: Number(values['stalled-interval']),
  maxStalledCount: Number(values['max-stalled-count']),
  concurrency: Number(values.concurrency),
});
worker.on('completed', job => say('completed', { jobId: job.id }));
worker.on('stalled', jobId => say('stalled', { jobId }));
worker.on('error', err => say('error', { message: String(err?.message ?? err) }));
worker.on('ready', () => say('ready', { id: worker.id, name: values.name ?? null, version: bullmqVersion }));

async function stop() {
  await worker.close();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
