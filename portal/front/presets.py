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
    "capacity": {
        "name": "Capacity under a p99 SLO",
        "description": "What does one instance hold with p99 under 500 ms and at most 1 % errors? Probes the "
                       "arrival rate upward from the unloaded rate, then bisects to 5 %, each boundary load "
                       "passing twice.",
        "search": "capacity",
        "mode": "open",
        "arrival": "poisson",
        "levels": [],
        "max_in_flight": 512,
        "warmup_s": 5,
        "duration_s": 30,
        "tokens": 512,
        "batch": 1,
        "dimensions": None,
        "timeout_s": 30,
        "slo_p99_ms": 500,
        "slo_error_rate": 0.01,
        "capacity_precision": 0.05,
        "capacity_trials": 2,
        "capacity_budget_s": 3600,
    },
    "mixed-lengths": {
        "name": "Mixed lengths",
        "description": "How does the server hold a realistic mix of short and long texts? Log-normal lengths "
                       "around 256 tokens (p10 to p90 about 135 to 490), concurrency 1 to 64.",
        "mode": "closed",
        "levels": [1, 4, 16, 64],
        "warmup_s": 10,
        "duration_s": 60,
        "tokens": 256,
        "length": "lognormal",
        "tokens_sigma": 0.5,
        "batch": 1,
        "dimensions": None,
        "timeout_s": 30,
    },
    "length-sweep": {
        "name": "Length sweep",
        "description": "How do throughput and latency change with the input length? Tokens per text 32 to 8,192 at "
                       "a fixed concurrency of 16: long inputs show what chunked prefill and the batch token "
                       "budget do.",
        "mode": "closed",
        "levels": [16],
        "shape_field": "tokens",
        "shape_values": [32, 128, 512, 2048, 8192],
        "warmup_s": 10,
        "duration_s": 60,
        "tokens": 512,
        "batch": 1,
        "dimensions": None,
        "timeout_s": 60,
    },
    "batch-sweep": {
        "name": "Batch sweep",
        "description": "Is it better to send many texts per request or many requests? Texts per request 1 to 64 at "
                       "concurrency 1 and 16: compare texts/s, and the latency each batch size costs.",
        "mode": "closed",
        "levels": [1, 16],
        "shape_field": "batch",
        "shape_values": [1, 4, 16, 64],
        "warmup_s": 10,
        "duration_s": 60,
        "tokens": 256,
        "batch": 1,
        "dimensions": None,
        "timeout_s": 60,
    },
    "encoding": {
        "name": "Float vs base64",
        "description": "Does the JSON encoding of the vectors cost more than the model? The same load with float and "
                       "base64 answers: response bytes, the client's decode time and its share of the latency.",
        "mode": "closed",
        "levels": [1, 16, 64],
        "shape_field": "encoding",
        "shape_values": ["float", "base64"],
        "warmup_s": 10,
        "duration_s": 60,
        "tokens": 512,
        "batch": 8,
        "dimensions": None,
        "timeout_s": 30,
    },
}

PRESET_LABELS = {"classic": "Classic sweep", "smoke": "Smoke test", "open-loop": "Arrival-rate sweep",
                 "capacity": "Capacity under an SLO", "mixed-lengths": "Mixed lengths", "length-sweep": "Length sweep",
                 "batch-sweep": "Batch sweep", "encoding": "Float vs base64"}
