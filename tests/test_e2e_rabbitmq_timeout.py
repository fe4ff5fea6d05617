"""A sweep longer than RabbitMQ's consumer_timeout, on real processes: a RabbitMQ node of the test's own
(its own node name, port and folders) with a consumer_timeout of a few seconds, a `celery worker`, a
driver and the simulator.

RabbitMQ closes the worker's channel when a delivery stays unacknowledged past consumer_timeout; the
worker reconnects (workers.broker) instead of stopping, the delivery comes back and is skipped as a
duplicate of the live run, and the sweep ends once, succeeded. Skipped, with the reason, where
rabbitmq-server cannot be started here.
"""
import pytest

from benchmarks.simulator import running_simulator
from tests import e2e_support as e2e
from tests.prerequisites import require

pytestmark = pytest.mark.e2e

AMQP_PORT = 5699
CONSUMER_TIMEOUT_MS = 5000
ENDED = ("succeeded", "failed", "cancelled", "interrupted")


def test_a_sweep_longer_than_the_consumer_timeout_runs_once_and_the_worker_keeps_consuming(tmp_path):
    require(e2e.rabbitmq_problem())
    try:
        rabbit = e2e.RabbitMQServer(AMQP_PORT, config={"consumer_timeout": str(CONSUMER_TIMEOUT_MS)})
    except RuntimeError as exc:
        require(f"a RabbitMQ node of the test's own could not be started here ({exc})")
    try:
        env = e2e.base_env(tmp_path, database_url=f"sqlite:///{tmp_path / 'rabbit.sqlite3'}", broker_url=rabbit.url,
                           extra={"EMBPERF_HEARTBEAT_S": "1", "EMBPERF_STALE_AFTER_S": "6",
                                  "EMBPERF_SWEEP_INTERVAL_S": "1"})
        queue = e2e.unique_name("rabbit")
        with running_simulator() as sim, e2e.worker_stack(env, queue, tmp_path, sim.base_url) as parts:
            driver, worker, ids = parts["driver"], parts["worker"], parts["ids"]
            # One level far longer than the consumer timeout (RabbitMQ looks at it about once a minute).
            plan = driver.call("plan", name="past the timeout", levels=[1], warmup_s=0, duration_s=90, tokens=64,
                               dimensions=128, timeout_s=5)["plan"]
            run_id = driver.call("start", target=ids["target"], plan=plan, label="long")["run"]
            state = e2e.wait_for(driver, run_id, lambda s: s["status"] in ENDED, timeout=240, worker=worker)
            log = worker.log()
            assert state["status"] == "succeeded", (state, log[-3000:])
            assert "delivery acknowledgement" in log, "RabbitMQ's consumer timeout fired: " + log[-3000:]
            assert "Unrecoverable error" not in log and worker.proc.poll() is None, log[-3000:]
            # It ran once: one claim, one level, the redelivery skipped.
            assert [level["concurrency"] for level in state["levels"]] == [1]
            assert log.count(f"run {run_id}: succeeded") == 1
            # The worker still consumes.
            after = driver.call("start", target=ids["target"], plan=ids["short"], label="after")["run"]
            assert e2e.wait_for(driver, after, lambda s: s["status"] in ENDED, timeout=60,
                                worker=worker)["status"] == "succeeded"
    finally:
        rabbit.stop()
