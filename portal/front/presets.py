"""Plan presets offered on the plan form (and usable by anything that seeds plans).

Each preset is a set of Plan field values; the form starts from one of them. None names a number of
dimensions: the field is then not sent and every model answers with its own vector length, so a
preset runs on any model.
"""

PLAN_PRESETS: dict[str, dict] = {
    "classic": {
        "name": "Classic sweep",
        "description": "Concurrency 1 to 64, 120 s per level, 512-token texts, the model's own dimensions.",
        "mode": "closed",
        "levels": [1, 4, 8, 16, 32, 64],
        "warmup_s": 10,
        "duration_s": 120,
        "tokens": 512,
        "batch": 1,
        "dimensions": None,
        "timeout_s": 30,
    },
    "smoke": {
        "name": "Smoke test",
        "description": "A quick check that the target answers under light load.",
        "mode": "closed",
        "levels": [1, 4],
        "warmup_s": 1,
        "duration_s": 5,
        "tokens": 64,
        "batch": 1,
        "dimensions": None,
        "timeout_s": 10,
    },
    "open-loop": {
        "name": "Arrival-rate sweep",
        "description": "Open loop, Poisson arrivals at fixed rates; latency counts queueing.",
        "mode": "open",
        "arrival": "poisson",
        "levels": [10, 50, 100, 200, 400],
        "max_in_flight": 512,
        "warmup_s": 10,
        "duration_s": 60,
        "tokens": 512,
        "batch": 1,
        "dimensions": None,
        "timeout_s": 30,
    },
}

PRESET_LABELS = {"classic": "Classic sweep", "smoke": "Smoke test", "open-loop": "Arrival-rate sweep"}
