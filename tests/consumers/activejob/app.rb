# frozen_string_literal: true

# A Rails-less ActiveJob app for sweeper's integration tests: Debian
# bookworm's ruby-activejob 6.1 with Debian's Sidekiq 6.4.1 as its backend,
# a GlobalID-locatable model, and an ApplicationJob subclass that records
# every run.
#
#   sidekiq -r ./app.rb -q mailers          a real ActiveJob worker
#   ruby -r ./app.rb -e 'enqueue(12, 2)'    the real ActiveJob client
#   ruby -r ./app.rb -e 'execute_stdin'     Rails' Resque JobWrapper path:
#                                           ActiveJob::Base.execute(args[0])
#
# Environment: AJ_OUT (the file that receives one JSON line per run),
# REDIS_URL, SIDEKIQ_NAMESPACE (redis-namespace prefix).

require "json"
require "logger"
require "active_job"
require "global_id"
require "sidekiq"
require "active_job/queue_adapters/sidekiq_adapter"

Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)

GlobalID.app = "sweeper-test"
ActiveJob::Base.queue_adapter = :sidekiq
ActiveJob::Base.logger = Logger.new(nil)

redis = {url: ENV.fetch("REDIS_URL", "redis://127.0.0.1:6379/0")}
namespace = ENV["SIDEKIQ_NAMESPACE"].to_s
redis[:namespace] = namespace unless namespace.empty?
Sidekiq.configure_server { |c| c.redis = redis }
Sidekiq.configure_client { |c| c.redis = redis }

# A record GlobalID can locate (`User.find`).
class User
  include GlobalID::Identification
  attr_reader :id

  def initialize(id)
    @id = id
  end

  def self.find(id)
    new(Integer(id))
  end
end

class ApplicationJob < ActiveJob::Base
end

class NotifyUserJob < ApplicationJob
  queue_as :mailers

  def perform(user, id, note: nil)
    line = {
      job_class: self.class.name, user_id: user.id, user_class: user.class.name, id: id,
      note: note, provider_job_id: provider_job_id, job_id: job_id,
      executions: executions, locale: locale, queue_name: queue_name
    }
    File.open(ENV.fetch("AJ_OUT"), "a") { |f| f.puts(line.to_json) }
  end
end

# The app's own enqueue, through ActiveJob and its Sidekiq adapter.
def enqueue(user_id, id, note: nil)
  NotifyUserJob.perform_later(User.new(user_id), id, note: note)
end

# What Rails' Resque adapter's JobWrapper.perform does with its argument.
def execute_stdin
  STDIN.each_line do |line|
    payload = JSON.parse(line)
    ActiveJob::Base.execute(payload.fetch("args").fetch(0))
  end
end
