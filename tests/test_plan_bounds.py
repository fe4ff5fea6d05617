"""One plan rule: every door (plan form, API, ingest, CLI, run start, worker) refuses a plan value
outside its bounds with the same message, the one benchmarks.plan gives."""
import copy

import pytest
from django.urls import reverse

from benchmarks.cli import main
from benchmarks.plan import PLAN_BOUNDS, PLAN_DEFAULTS, FieldErrors, PlanLimits, normalize_plan, plan_errors
from portal.front.presets import PLAN_PRESETS
from portal.sweeps.models import Plan, Run, Target
from tests.api_support import document, token_client

pytestmark = pytest.mark.usefixtures("fresh_throttles")

FORM = {
    "name": "bounded", "description": "", "mode": "closed", "levels": "1, 4", "arrival": "poisson",
    "max_in_flight": "", "warmup_s": "2", "duration_s": "30", "tokens": "512", "batch": "1", "dimensions": "",
    "encoding": "float", "timeout_s": "30", "abort_error_rate": "0.5", "abort_window_s": "10", "slo_p99_ms": "",
    "input_mode": "unique", "corpus_text": "", "processes": "1",
}
API = {"name": "bounded", "levels": [1, 4], "warmup_s": 2, "duration_s": 30}


def rule_message(change: dict, field: str) -> str:
    """What the plan rule says about this change with the default limits."""
    plan = {"levels": [1, 4], "warmup_s": 2, "duration_s": 30, **change}
    errors = plan_errors(plan, PlanLimits())[1]
    assert list(errors) == [field], errors
    return errors[field][0]


def form_errors(client, user, change: dict) -> dict:
    client.force_login(user)
    data = {**FORM}
    for key, value in change.items():
        data[{"input": "input_mode"}.get(key, key)] = (
            ", ".join(str(v) for v in value) if isinstance(value, list) else str(value))
    response = client.post(reverse("plan-create"), data)
    assert response.status_code == 200, "the form saved a plan outside the bounds"
    return response.context["form"].errors


def api_errors(api, change: dict) -> dict:
    response = api.post("/api/v1/plans/", {**API, **change})
    assert response.status_code == 400, response.json()
    return response.json()


def ingest_errors(api, change: dict) -> dict:
    doc = document()
    doc["plan"].update({"warmup_s": 2, "duration_s": 30, "timeout_s": 30, "dimensions": None, **change})
    if change.get("mode") == "open":
        for level, rate in zip(doc["levels"], doc["plan"]["levels"], strict=False):
            level["rate"] = rate
    response = api.post("/api/v1/ingest/", doc, format="json")
    assert response.status_code == 400, response.json()
    return response.json()


# (change to a valid plan, the field it breaks): one case per bound of the table.
OUT_OF_BOUNDS = [
    ({"levels": list(range(1, 34))}, "levels"),  # EMBPERF_MAX_LEVELS = 32
    ({"levels": [1, 4097]}, "levels"),  # EMBPERF_MAX_CONCURRENCY = 4096
    ({"mode": "open", "levels": [10, 100001]}, "levels"),  # EMBPERF_MAX_RATE = 100,000
    ({"levels": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], "duration_s": 3600}, "levels"),  # 12 h a run
    ({"warmup_s": 3601}, "warmup_s"),
    ({"warmup_s": 1e300}, "warmup_s"),
    ({"duration_s": 3601}, "duration_s"),  # EMBPERF_MAX_LEVEL_SECONDS = 3600
    ({"timeout_s": 601}, "timeout_s"),
    ({"tokens": 32769}, "tokens"),
    ({"tokens": 1_000_000_000}, "tokens"),
    ({"batch": 2049}, "batch"),
    ({"dimensions": 16385}, "dimensions"),
    ({"processes": 65}, "processes"),
    ({"processes": 2147483647}, "processes"),
    ({"max_in_flight": 4097}, "max_in_flight"),
    ({"abort_window_s": 0.5}, "abort_window_s"),
    ({"abort_window_s": 1e300}, "abort_window_s"),
    ({"abort_error_rate": 1.5}, "abort_error_rate"),
    ({"abort_error_rate": 0}, "abort_error_rate"),
    ({"slo_p99_ms": 0}, "slo_p99_ms"),
    # Each bound within limits, their product not: the worker's memory budget (4 GiB).
    ({"levels": [4096], "batch": 2048, "tokens": 32768}, "levels"),
    # No dimensions: answers may take the maximum length.
    ({"levels": [1, 256], "batch": 32, "tokens": 512}, "levels"),
    # An open loop's default cap is 4096 in flight.
    ({"mode": "open", "levels": [10], "batch": 2, "tokens": 512}, "levels"),
]


@pytest.mark.parametrize(("change", "field"), OUT_OF_BOUNDS)
def test_every_bound_is_refused_by_form_api_and_ingest_with_the_same_message(client, owner, change, field):
    message = rule_message(change, field)
    model_field = {"input": "input_mode"}.get(field, field)
    assert form_errors(client, owner, change)[model_field] == [message]
    api = token_client(owner)
    assert api_errors(api, change)[model_field] == [message]
    assert ingest_errors(api, change)[f"plan.{field}"] == [message]
    assert not Plan.objects.filter(name="bounded").exists() and not Run.objects.exists()


# The abort policy, where the copies of the rule used to disagree (the engine wanted a window of at
# least 1 s, the form only above 0; the CLI took an error rate of 0): one message at each door.
WINDOW = "The abort window must be at least 1 s; 0.5 is too low."
RATE = "The abort error rate may be at most 1; 1.5 is too high."
ABORT = {"abort_window_s": 0.5, "abort_error_rate": 1.5}


def test_abort_policy_door_form(client, owner, team):
    errors = form_errors(client, owner, ABORT)
    assert (errors["abort_window_s"], errors["abort_error_rate"]) == ([WINDOW], [RATE])


def test_abort_policy_door_api(owner, team):
    errors = api_errors(token_client(owner), ABORT)
    assert (errors["abort_window_s"], errors["abort_error_rate"]) == ([WINDOW], [RATE])


def test_abort_policy_door_ingest(owner, team):
    errors = ingest_errors(token_client(owner), ABORT)
    assert (errors["plan.abort_window_s"], errors["plan.abort_error_rate"]) == ([WINDOW], [RATE])


def test_abort_policy_door_cli(capsys):
    assert main(["run", "--url", "http://127.0.0.1:9/v1", "--model", "m", "--abort-window", "0.5",
                 "--abort-error-rate", "1.5"]) == 2
    err = capsys.readouterr().err
    assert f"--abort-window: {WINDOW}" in err and f"--abort-error-rate: {RATE}" in err


def test_abort_policy_door_engine():
    # What the worker calls: the same words, by field.
    with pytest.raises(FieldErrors) as info:
        normalize_plan({"levels": [1], **ABORT})
    assert info.value.errors == {"abort_error_rate": [RATE], "abort_window_s": [WINDOW]}


def test_the_memory_budget_names_its_figure_and_the_plan_within_it_passes():
    message = rule_message({"levels": [4096], "batch": 2048, "tokens": 32768}, "levels")
    assert message.startswith("This plan may hold up to 8,196 GiB on a worker (4,096 requests in flight × "
                              "2,048 texts per request × up to 1 MiB per text")
    assert "budget of 4 GiB per worker (EMBPERF_MAX_WORKER_MEMORY_MIB)" in message
    # The same load with the vector length stated fits: the cap follows the plan's own length.
    assert plan_errors({"levels": [1, 256], "batch": 32, "dimensions": 1024})[1] == {}
    assert plan_errors({"levels": [4096]})[1] == {}  # the largest concurrency, one text of any length
    assert plan_errors({"levels": [1, 256], "batch": 32},
                       PlanLimits(max_worker_memory_mib=8192))[1] == {}


def test_a_plan_checked_twice_reads_the_same():
    # The worker checks a plan the portal already checked: a short level's cut abort window must pass again.
    once = normalize_plan({"levels": [1], "duration_s": 0.5})
    assert normalize_plan(once) == once and once["abort_window_s"] == 1


def test_the_maximum_vector_length_is_one_setting():
    limits = PlanLimits.from_environ({"EMBPERF_MAX_VECTOR_LENGTH": "4096"})
    assert limits.max_vector_length == 4096
    errors = plan_errors({"levels": [1], "dimensions": 8192}, limits)[1]
    assert errors == {"dimensions": ["Dimensions may be at most 4096 on this installation "
                                     "(EMBPERF_MAX_VECTOR_LENGTH); 8192 is too high."]}


@pytest.mark.parametrize("preset", sorted(PLAN_PRESETS))
def test_presets_are_within_the_bounds(preset):
    assert plan_errors(PLAN_PRESETS[preset])[1] == {}


def test_target_lists_are_bounded_at_every_door(client, owner, team):
    many = [f"http://10.0.0.{i}:8000/v1" for i in range(1, 34)]
    message = "At most 32 base URLs per target; 33 were given."
    client.force_login(owner)
    response = client.post(reverse("target-create"), {
        "name": "wide", "flavor": "openai", "base_urls": "\n".join(many), "model_name": "m", "engine": "other",
        "gpu_source": "none", "queue": "sweeps", "metrics_urls": "\n".join(many[:9])})
    errors = response.context["form"].errors
    assert errors["base_urls"] == [message]
    assert errors["metrics_urls"] == ["At most 8 metrics URLs per target; 9 were given."]
    api = token_client(owner)
    response = api.post("/api/v1/targets/", {"name": "wide", "base_urls": many, "model_name": "m"})
    assert response.status_code == 400 and response.json()["base_urls"] == [message]
    doc = document()
    doc["target"]["base_urls"] = many
    response = api.post("/api/v1/ingest/", doc, format="json")
    assert response.status_code == 400 and response.json()["target.base_urls"] == [message]
    assert not Target.objects.filter(name="wide").exists()


def test_cli_refuses_the_bounds_before_sending_anything(capsys):
    assert main(["run", "--url", "http://127.0.0.1:9/v1", "--model", "m", "--warmup", "1e300"]) == 2
    assert "--warmup: The warm-up may be at most 3600 s; 1e+300 is too high." in capsys.readouterr().err


def test_cli_reads_the_operator_limits_from_the_environment(monkeypatch, capsys):
    monkeypatch.setenv("EMBPERF_MAX_CONCURRENCY", "8")
    assert main(["run", "--url", "http://127.0.0.1:9/v1", "--model", "m", "--levels", "1,16"]) == 2
    assert "above this installation's maximum of 8 (EMBPERF_MAX_CONCURRENCY)" in capsys.readouterr().err


def test_open_loop_always_has_an_in_flight_cap():
    plan = normalize_plan({"mode": "open", "levels": [50]}, PlanLimits(max_concurrency=300))
    assert plan["max_in_flight"] == 300
    assert normalize_plan({"mode": "open", "levels": [50], "max_in_flight": 20})["max_in_flight"] == 20
    assert normalize_plan({"mode": "closed", "levels": [5]})["max_in_flight"] is None


def test_plan_defaults_live_in_one_table():
    plan = Plan(levels=[1])
    for name in ("warmup_s", "duration_s", "tokens", "batch", "timeout_s", "abort_error_rate", "abort_window_s",
                 "processes"):
        assert getattr(plan, name) == PLAN_DEFAULTS[name] == PLAN_BOUNDS[name].default
    from benchmarks.cli import build_parser

    args = build_parser().parse_args(["run", "--url", "http://h/v1", "--model", "m"])
    assert (args.warmup, args.duration, args.tokens, args.abort_window, args.abort_error_rate) == (
        PLAN_DEFAULTS["warmup_s"], PLAN_DEFAULTS["duration_s"], PLAN_DEFAULTS["tokens"],
        PLAN_DEFAULTS["abort_window_s"], PLAN_DEFAULTS["abort_error_rate"])


def test_huge_warmup_never_becomes_a_celery_time_limit(team, target, owner, settings):
    from portal.sweeps.services import sweep_time_limits
    from workers.tasks import planned_soft_limit

    # A plan saved before the bounds existed (straight into the database, past every door).
    plan = Plan.objects.create(team=team, name="forever", levels=[1, 2], warmup_s=1e300, duration_s=1e300)
    soft, hard = sweep_time_limits(plan)
    ceiling = settings.EMBPERF_MAX_RUN_SECONDS * 1.25 + 120
    assert soft <= ceiling and hard <= ceiling + 60
    run = Run.objects.create(team=team, target=target, plan=plan, plan_config=plan.to_spec())
    assert planned_soft_limit(run) <= ceiling
    # Starting it is refused at every door, naming the plan and the field.
    api = token_client(owner)
    response = api.post("/api/v1/runs/", {"target": target.pk, "plan": plan.pk})
    assert response.status_code == 400
    assert "warmup_s: The warm-up may be at most 3600 s; 1e+300 is too high." in response.json()["plan"][0]
    client_errors = _start_form_errors(owner, target, plan)
    assert client_errors["plan"] == response.json()["plan"]
    assert Run.objects.count() == 1


def _start_form_errors(user, target, plan) -> dict:
    from portal.front.forms import RunForm

    form = RunForm(data={"target": target.pk, "plan": plan.pk}, user=user)
    assert not form.is_valid()
    return form.errors


def test_worker_refuses_a_plan_outside_the_bounds_with_the_rule_message(transactional_db, team, target):
    # transactional_db: the task's recorder writes from a thread of its own (see test_worker_tasks.py).
    from workers.tasks import execute_sweep

    plan = {**PLAN_DEFAULTS, "levels": [1], "warmup_s": 1e300}
    run = Run.objects.create(team=team, target=target, plan_config=plan, target_config=target.to_spec(),
                             status=Run.Status.RUNNING)
    assert execute_sweep(run.pk, node="test") == Run.Status.FAILED
    run.refresh_from_db()
    assert "plan warmup_s: The warm-up may be at most 3600 s; 1e+300 is too high." in run.status_reason


def test_undecodable_histogram_is_400_naming_the_field(owner, team):
    api = token_client(owner)
    doc = document()
    doc["levels"][1]["histogram"] = "garbage!!"
    response = api.post("/api/v1/ingest/", doc, format="json")
    assert response.status_code == 400
    assert "levels[1].histogram" in response.json()
    assert not Run.objects.exists()


def test_implausible_figures_are_refused_and_compare_never_answers_500(owner, team):
    api = token_client(owner)
    doc = document()
    doc["levels"][0]["qps"] = 1e308
    response = api.post("/api/v1/ingest/", doc, format="json")
    assert response.status_code == 400 and "levels[0].qps" in response.json()
    # Figures already stored (before this check) still compare without a server error.
    first = api.post("/api/v1/ingest/", document(), format="json").json()["id"]
    second = api.post("/api/v1/ingest/", copy.deepcopy(document()), format="json").json()["id"]
    from portal.sweeps.models import Level

    Level.objects.filter(run_id=second, index=0).update(qps=1e308)
    level = Level.objects.get(run_id=second, index=0)
    level.data = {**level.data, "qps": 1e308}
    level.save()
    response = api.get(f"/api/v1/compare/?runs={first},{second}")
    assert response.status_code == 200
    for fmt in ("csv", "md"):
        assert api.get(f"/api/v1/compare/?runs={first},{second}&format={fmt}").status_code == 200
