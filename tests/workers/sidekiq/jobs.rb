# Jobs a real Sidekiq worker runs in the tests. Each job counts its starts, and marks in Redis when
# it starts (with the identity of the Sidekiq process running it) and when it finishes, so a test
# knows without waiting for Sidekiq's 5-second heartbeat.
require "redis"
Redis.silence_deprecations = true # redis-rb 4.8 warns on every BRPOP Sidekiq 6.4 issues
require "sidekiq"

module Harness
  extend Sidekiq::Util # the identity "<hostname>:<pid>:<nonce>" Sidekiq registers under

  def self.mark(state, jid, value)
    Sidekiq.redis { |conn| conn.set("harness:sidekiq:#{state}:#{jid}", value) }
  end
end

class SleepJob
  include Sidekiq::Worker

  def perform(seconds)
    Sidekiq.redis { |conn| conn.incr("harness:sidekiq:runs:#{jid}") }
    Harness.mark("started", jid, Harness.identity)
    sleep seconds
    Harness.mark("finished", jid, Time.now.to_f)
  end
end
