"""The REST API (/api/v1/), API tokens, exports, ingest and raw-sample storage."""
