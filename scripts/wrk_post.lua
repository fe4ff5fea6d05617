-- wrk script for `make bench`: POST one OpenAI embeddings request body on every request.
-- The body comes from the environment variable EMBPERF_WRK_BODY (set by scripts/bench_engine.py);
-- without it, a one-text request for model "sim-embed" with 1024 dimensions.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("EMBPERF_WRK_BODY")
    or '{"model":"sim-embed","input":"the quick brown fox jumps over the lazy dog","dimensions":1024}'
