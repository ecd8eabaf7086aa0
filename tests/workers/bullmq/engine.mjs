// Loads BullMQ from the engine directory the harness installed it into (BULLMQ_HOME), because these
// scripts live in the repo, away from that node_modules.
import { createRequire } from 'node:module';
import path from 'node:path';

const home = process.env.BULLMQ_HOME;
if (!home) {
  throw new Error('BULLMQ_HOME must name the directory where bullmq is installed');
}
const require = createRequire(path.join(home, 'package.json'));

export const { Queue, Worker } = require('bullmq');
export const bullmqVersion = require('bullmq/package.json').version;

// BullMQ passes `url` on to ioredis, which reads the db number from the URL path.
export function connection(redisUrl) {
  return { url: redisUrl, maxRetriesPerRequest: null };
}

export function say(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + '\n');
}
