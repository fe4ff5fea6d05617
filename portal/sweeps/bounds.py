"""The plan rule (benchmarks.plan) with this installation's limits, in the models' field names.

Forms, the API, ingest, starting a run and the worker all check plans here, so every door refuses
a value with the engine's own message.
"""
from collections.abc import Mapping

from django.conf import settings

from benchmarks.plan import PlanLimits, plan_errors, target_list_errors, time_limit_seconds

# Engine plan field -> Plan model field, where the names differ.
MODEL_FIELD = {"input": "input_mode", "corpus": "corpus_text"}


def plan_limits() -> PlanLimits:
    """The limits set in the settings (EMBPERF_MAX_*)."""
    return PlanLimits(
        max_levels=settings.EMBPERF_MAX_LEVELS,
        max_concurrency=settings.EMBPERF_MAX_CONCURRENCY,
        max_rate=settings.EMBPERF_MAX_RATE,
        max_level_seconds=settings.EMBPERF_MAX_LEVEL_SECONDS,
        max_run_seconds=settings.EMBPERF_MAX_RUN_SECONDS,
        max_vector_length=settings.EMBPERF_MAX_VECTOR_LENGTH,
        max_worker_memory_mib=settings.EMBPERF_MAX_WORKER_MEMORY_MIB,
    )


def plan_field_errors(spec: Mapping) -> dict[str, list[str]]:
    """{Plan model field: [messages]} for an engine plan spec (Plan.to_spec()); empty when it is valid."""
    return checked_plan(spec)[1]


def checked_plan(spec: Mapping) -> tuple[dict, dict[str, list[str]]]:
    """(the spec as the plan rule fills and checks it, {Plan model field: [messages]})."""
    checked, errors = plan_errors(spec, plan_limits())
    return checked, {MODEL_FIELD.get(field, field): messages for field, messages in errors.items()}


def plan_document_errors(spec: Mapping) -> dict[str, list[str]]:
    """{field: [messages]} for the plan section of a result document (engine names)."""
    return plan_errors(spec, plan_limits())[1]


def target_field_errors(spec: Mapping) -> dict[str, list[str]]:
    """{field: [messages]} for a target's base and metrics URL lists."""
    return target_list_errors(spec)


def sweep_seconds(spec: Mapping) -> float:
    """The planned time of a plan spec, capped at EMBPERF_MAX_RUN_SECONDS (sizes the task's time limits)."""
    return time_limit_seconds(spec, plan_limits())
