// Adds `count` jobs that sleep `seconds` each to a BullMQ queue and prints their ids, one a line.
import { Queue, connection } from './engine.mjs';

const [redisUrl, queueName, seconds, count = '1'] = process.argv.slice(2);
const queue = new Queue(queueName, { connection: connection(redisUrl) });
for (let i = 0; i < Number(count); i++) {
  const job = await queue.add('sleep', { seconds: Number(seconds) });
  process.stdout.write(`${job.id}\n`);
}
await queue.close();
