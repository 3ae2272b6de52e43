"""A Python app's jobs, as the integration tests' real Celery and RQ workers
run them. Each job appends what it received to $PROBE_OUT as one JSON line.

Celery: `celery -A probe worker -Q <queue>` with CELERY_BROKER (redis:// or
amqp://) and, for Redis, CELERY_KEYPREFIX as kombu's global_keyprefix.
RQ: `rq worker` runs `probe.rq_notify` (pickle or JSONSerializer).
"""
import json
import os

from celery import Celery

app = Celery("probe", broker=os.environ.get("CELERY_BROKER", "redis://127.0.0.1:6379/0"))
app.conf.accept_content = ["json"]
app.conf.task_serializer = "json"
if os.environ.get("CELERY_KEYPREFIX"):
    app.conf.broker_transport_options = {"global_keyprefix": os.environ["CELERY_KEYPREFIX"]}


def _record(entry):
    with open(os.environ["PROBE_OUT"], "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


@app.task(name="probe.notify", bind=True)
def notify(self, user_id, id=None, note=None):
    _record(
        {
            "system": "celery",
            "task_id": self.request.id,
            "args": list(self.request.args or []),
            "kwargs": dict(self.request.kwargs or {}),
            "user_id": user_id,
            "id": id,
            "note": note,
            "routing_key": (self.request.delivery_info or {}).get("routing_key"),
            "priority": (self.request.delivery_info or {}).get("priority"),
        }
    )


def rq_notify(user_id, id=None):
    from rq import get_current_job

    job = get_current_job()
    _record({"system": "rq", "job_id": job.id if job else None, "user_id": user_id, "id": id})
