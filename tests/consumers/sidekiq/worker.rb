# frozen_string_literal: true

# Test consumer for sweeper's integration tests.
#
# Loaded by a real Sidekiq (Debian bookworm's ruby-sidekiq 6.4.1) with
#   sidekiq -r ./worker.rb -q <queue> ...
# Every job it completes is appended as one JSON line
#   {"class":..,"args":[..],"jid":..,"queue":..}
# to the file named by SIDEKIQ_OUT. See README.md beside this file.
#
# Environment:
#   SIDEKIQ_OUT            (required) file that receives one JSON line per completed job
#   REDIS_URL              read by Sidekiq itself, e.g. redis://127.0.0.1:6379/7
#   SIDEKIQ_CLASSES        extra job class names, comma/space separated; "A::B" is allowed
#   SIDEKIQ_FAIL_CLASSES   class names whose jobs raise instead of recording
#                          (they then land in the `retry` zset, or `dead` with retry:false)
#   SIDEKIQ_SLEEP          seconds each job sleeps before recording (to observe busy workers)
#   SIDEKIQ_POLL_INTERVAL  seconds between polls of the schedule/retry zsets (default 5,
#                          and the first poll then waits 10-15 s; setting this drops the 10 s)
#   SIDEKIQ_NAMESPACE      key prefix via the redis-namespace gem (Debian: ruby-redis-namespace)

require "json"
require "sidekiq"

# redis-rb 4.8 prints a deprecation line for every SADD Sidekiq issues; keep logs readable.
Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)

module SweeperConsumer
  BUILTIN_CLASSES = %w[NotifyUser SendReceipt].freeze
  CONSTANT_NAME = /\A[A-Z][A-Za-z0-9_]*\z/
  WRITE_LOCK = Mutex.new

  class InjectedFailure < StandardError; end

  def self.names_from(var)
    ENV.fetch(var, "").split(/[\s,]+/).map(&:strip).reject(&:empty?)
  end

  def self.out_path
    path = ENV["SIDEKIQ_OUT"].to_s
    raise ArgumentError, "SIDEKIQ_OUT must name the output file" if path.empty?
    path
  end

  def self.record(job, queue)
    line = JSON.generate(
      "class" => job["class"],
      "args" => job["args"],
      "jid" => job["jid"],
      "queue" => queue
    )
    WRITE_LOCK.synchronize do
      File.open(out_path, "a") do |f|
        f.flock(File::LOCK_EX)
        f.write(line + "\n")
        f.flush
      end
    end
  end

  # Server middleware: keeps the parsed job hash and the queue name it was
  # fetched from for the thread that runs the job, so #perform can report them.
  class Capture
    def call(_worker, job, queue)
      Thread.current[:sweeper_consumer_job] = [job, queue]
      yield
    ensure
      Thread.current[:sweeper_consumer_job] = nil
    end
  end

  # Behaviour shared by every job class defined here.
  module Recording
    def perform(*_args)
      job, queue = Thread.current[:sweeper_consumer_job]
      pause = ENV["SIDEKIQ_SLEEP"].to_f
      sleep(pause) if pause > 0
      if SweeperConsumer.names_from("SIDEKIQ_FAIL_CLASSES").include?(job["class"])
        raise InjectedFailure, "injected failure for #{job["class"]} #{job["jid"]}"
      end
      SweeperConsumer.record(job, queue)
    end
  end

  # Defines a Sidekiq job class under its full name ("Billing::Charge"
  # creates module Billing if needed). Existing constants are reused.
  def self.define(full_name)
    parts = full_name.sub(/\A::/, "").split("::")
    unless !parts.empty? && parts.all? { |p| p.match?(CONSTANT_NAME) }
      raise ArgumentError, "not a Ruby constant name: #{full_name.inspect}"
    end

    scope = Object
    parts[0...-1].each do |mod|
      scope = if scope.const_defined?(mod, false)
        scope.const_get(mod, false)
      else
        scope.const_set(mod, Module.new)
      end
    end

    leaf = parts.last
    return scope.const_get(leaf, false) if scope.const_defined?(leaf, false)

    klass = Class.new do
      include Sidekiq::Worker
      include SweeperConsumer::Recording
    end
    scope.const_set(leaf, klass)
  end
end

(SweeperConsumer::BUILTIN_CLASSES +
  SweeperConsumer.names_from("SIDEKIQ_CLASSES") +
  SweeperConsumer.names_from("SIDEKIQ_FAIL_CLASSES")).uniq.each do |name|
  SweeperConsumer.define(name)
end

Sidekiq.configure_server do |config|
  SweeperConsumer.out_path # fail at boot, not per job, when SIDEKIQ_OUT is missing

  namespace = ENV["SIDEKIQ_NAMESPACE"].to_s
  unless namespace.empty?
    config.redis = {url: ENV.fetch("REDIS_URL", "redis://127.0.0.1:6379/0"), namespace: namespace}
  end

  poll = ENV["SIDEKIQ_POLL_INTERVAL"].to_s
  config.options[:poll_interval_average] = Float(poll) unless poll.empty?

  config.server_middleware do |chain|
    chain.add SweeperConsumer::Capture
  end
end
