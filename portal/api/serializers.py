"""API serializers. Strict: a field the resource does not take is refused with 400 naming it.

Targets and plans are checked by the same rules the pages' forms use (portal/sweeps/rules.py), so
the API and the browser accept exactly the same values with the same messages.
"""
from collections.abc import Mapping

from django.core.exceptions import ValidationError as DjangoValidationError
from django.urls import NoReverseMatch, reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from benchmarks.verdict import thresholds_of
from portal.accounts.access import api_teams, visible_to_request
from portal.accounts.models import Membership, Team
from portal.sweeps import rules
from portal.sweeps.models import Level, Plan, Run, Target
from portal.sweeps.services import run_start_errors


class StrictMixin:
    """Refuse keys the serializer does not accept, naming each one."""

    def to_internal_value(self, data):
        if isinstance(data, Mapping):
            errors = {}
            for key in data:
                field = self.fields.get(key)
                if field is None:
                    errors[key] = ["Unknown field."]
                elif field.read_only:
                    errors[key] = ["This field is read-only."]
            if errors:
                raise serializers.ValidationError(errors)
        return super().to_internal_value(data)


def _request(serializer):
    return serializer.context["request"]


def _web_url(name: str, pk: int) -> str | None:
    try:
        return reverse(name, args=[pk])
    except NoReverseMatch:  # the web pages are not installed (API-only deployment)
        return None


class TeamSerializer(serializers.ModelSerializer):
    role = serializers.SerializerMethodField()

    class Meta:
        model = Team
        fields = ["id", "slug", "name", "role"]

    def get_role(self, team) -> str | None:
        user = _request(self).user
        return Membership.objects.filter(team=team, user=user).values_list("role", flat=True).first()


def _choose_team(serializer, value: Team | None) -> Team:
    """The team a new object goes to: the one given, or the only team the request may write to."""
    writable = api_teams(_request(serializer), write=True)
    if value is not None:
        if not writable.filter(pk=value.pk).exists():
            raise serializers.ValidationError({"team": ["You cannot create things in this team (read-only role)."]})
        return value
    teams = list(writable[:2])
    if len(teams) == 1:
        return teams[0]
    if not teams:
        raise serializers.ValidationError({"team": ["You have no team where you may create things."]})
    raise serializers.ValidationError({"team": ["Required: you belong to several teams; give the team's id."]})


@extend_schema_field(OpenApiTypes.INT)
class VisibleTeamField(serializers.PrimaryKeyRelatedField):
    def get_queryset(self):
        return api_teams(self.context["request"])


class RuleCheckedSerializer(StrictMixin, serializers.Serializer):
    """Reads a target or plan, checks it with its rules (portal.sweeps.rules) and saves it.

    The values not given are the stored ones (on create, the model's defaults), so a PATCH is checked
    as the whole object it makes, as the page's form checks it."""

    # The model fields this resource writes (besides the team).
    model_fields: tuple[str, ...] = ()

    def validate(self, attrs):
        stored = self.instance
        instance = stored if stored is not None else self.Meta.model(team=_choose_team(self, attrs.get("team")))
        values = {name: getattr(instance, name) for name in self.model_fields}
        values.update({name: value for name, value in attrs.items() if name in self.model_fields})
        errors = self.rule_errors(values, attrs, instance.team, stored)
        if errors:
            raise serializers.ValidationError(errors)
        self._checked = (instance, values)
        return attrs

    def rule_errors(self, values: dict, attrs: dict, team: Team, stored) -> dict[str, list[str]]:
        """{field: [messages]}; may normalize `values` in place."""
        raise NotImplementedError

    def before_save(self, instance, attrs: dict) -> None:
        """Hook for fields that are not plain model values."""

    def _save(self, validated_data):
        instance, values = self._checked
        for name, value in values.items():
            setattr(instance, name, value)
        self.before_save(instance, validated_data)
        instance.save()
        return instance

    def create(self, validated_data):
        return self._save(validated_data)

    def update(self, instance, validated_data):
        return self._save(validated_data)


class TargetSerializer(RuleCheckedSerializer):
    model_fields = ("name", "flavor", "base_urls", "model_name", "tokenizer", "engine", "engine_version",
                    "launch_config", "gpu_source", "gpu_indices", "metrics_urls", "queue")

    id = serializers.IntegerField(read_only=True)
    url = serializers.SerializerMethodField()
    team = VisibleTeamField(required=False, help_text="Team id; optional when you can write to one team only.")
    name = serializers.CharField(max_length=100)
    flavor = serializers.ChoiceField(choices=Target.Flavor.choices, required=False)
    # How many URLs a target may list is the plan rule's (benchmarks.plan.TARGET_LISTS), through the rules.
    base_urls = serializers.ListField(child=serializers.CharField(max_length=500))
    model_name = serializers.CharField(max_length=200)
    tokenizer = serializers.CharField(
        max_length=500, required=False, allow_blank=True,
        help_text="The model's tokenizer: a Hugging Face model id, or a file in the workers' tokenizer folder "
                  "(EMBPERF_TOKENIZER_DIR, where the operator keeps one), such as bge/tokenizer.json.",
    )
    api_key = serializers.CharField(
        write_only=True, required=False, allow_blank=True, max_length=1000, trim_whitespace=True,
        help_text="Write-only. Send a new key to replace the stored one, an empty string to remove it.",
    )
    has_api_key = serializers.SerializerMethodField()
    engine = serializers.ChoiceField(choices=Target.Engine.choices, required=False)
    engine_version = serializers.CharField(max_length=50, required=False, allow_blank=True)
    launch_config = serializers.DictField(child=serializers.CharField(max_length=1000, allow_blank=True),
                                          required=False)
    gpu_source = serializers.ChoiceField(choices=Target.GpuSource.choices, required=False)
    gpu_indices = serializers.CharField(max_length=50, required=False, allow_blank=True)
    metrics_urls = serializers.ListField(child=serializers.CharField(max_length=500), required=False)
    queue = serializers.CharField(max_length=50, required=False)
    last_probe = serializers.JSONField(
        read_only=True, source="current_probe",
        help_text="The last connection test of the target's current base URLs (`base_urls` says which it tried); "
                  "null when none was run since they last changed.")
    created = serializers.DateTimeField(read_only=True)
    updated = serializers.DateTimeField(read_only=True)

    class Meta:
        model = Target

    def get_url(self, obj) -> str:
        return reverse("api:target-detail", args=[obj.pk])

    def get_has_api_key(self, obj) -> bool:
        return bool(obj.api_key)

    def to_representation(self, instance):
        data = super().to_representation(instance)
        data["team"] = instance.team_id
        return data

    def rule_errors(self, values, attrs, team, stored):
        errors: dict[str, list[str]] = {}
        for name in ("base_urls", "metrics_urls"):
            # One URL per item, as the page's text box holds one per line.
            try:
                values[name] = rules.parse_url_list(line for item in values[name] for line in str(item).splitlines())
            except DjangoValidationError as exc:
                errors[name] = list(exc.messages)
                del values[name]
                continue
            if name == "base_urls" and not values[name]:
                errors[name] = [rules.NO_BASE_URL]
                del values[name]
        key_errors = [m for m in map(rules.config_key_error, values["launch_config"] or {}) if m]
        if key_errors:
            errors["launch_config"] = key_errors
        errors.update(rules.clean_target_fields(values))
        # Without "api_key" the stored key is kept; "" removes it, another value replaces it.
        keeps_key = stored is not None and "api_key" not in attrs
        joined = rules.target_errors(values, team=team, stored=stored, keeps_stored_key=keeps_key)
        for field, messages in joined.items():
            errors.setdefault(field, []).extend(messages)
        return errors

    def before_save(self, instance, attrs):
        if "api_key" in attrs:
            instance.api_key = attrs["api_key"]


class PlanSerializer(RuleCheckedSerializer):
    model_fields = Plan.EDITABLE_FIELDS

    id = serializers.IntegerField(read_only=True)
    url = serializers.SerializerMethodField()
    team = VisibleTeamField(required=False, help_text="Team id; optional when you can write to one team only.")
    name = serializers.CharField(max_length=100)
    description = serializers.CharField(required=False, allow_blank=True, max_length=10_000)
    mode = serializers.ChoiceField(choices=Plan.Mode.choices, required=False)
    # Numbers are only read here; their ranges are the plan rule's (benchmarks.plan, through the rules),
    # so the API refuses a value with the same message as the page.
    levels = serializers.ListField(child=serializers.FloatField(), required=False,
                                   help_text="Concurrencies (closed loop) or rates in requests/s (open loop). "
                                             "Not used by a capacity search, which chooses its own.")
    arrival = serializers.ChoiceField(choices=Plan.Arrival.choices, required=False)
    max_in_flight = serializers.IntegerField(required=False, allow_null=True)
    warmup_s = serializers.FloatField(required=False)
    duration_s = serializers.FloatField(required=False)
    tokens = serializers.IntegerField(required=False)
    shape_field = serializers.ChoiceField(
        choices=Plan.ShapeField.choices, required=False, allow_blank=True, allow_null=True,
        help_text="A shape axis: run the levels once per value of tokens, batch, encoding or dimensions "
                  "(docs/request-shapes.md); blank or null for none.")
    shape_values = serializers.ListField(
        child=serializers.JSONField(), required=False, allow_null=True, max_length=64,
        help_text="The shape axis's values in order, e.g. [32, 128, 512] or [\"float\", \"base64\"].")
    length = serializers.ChoiceField(
        choices=Plan.Length.choices, required=False,
        help_text="fixed (every text `tokens` long), uniform (tokens_min to tokens_max) or lognormal (median "
                  "`tokens`, spread tokens_sigma); docs/request-shapes.md.")
    tokens_min = serializers.IntegerField(required=False, allow_null=True)
    tokens_max = serializers.IntegerField(required=False, allow_null=True)
    tokens_sigma = serializers.FloatField(required=False, allow_null=True)
    batch = serializers.IntegerField(required=False)
    dimensions = serializers.IntegerField(required=False, allow_null=True)
    encoding = serializers.ChoiceField(choices=Plan.Encoding.choices, required=False)
    timeout_s = serializers.FloatField(required=False)
    abort_error_rate = serializers.FloatField(required=False)
    abort_window_s = serializers.FloatField(required=False)
    slo_p99_ms = serializers.FloatField(required=False, allow_null=True)
    slo_p90_ms = serializers.FloatField(required=False, allow_null=True)
    slo_p50_ms = serializers.FloatField(required=False, allow_null=True)
    slo_mean_ms = serializers.FloatField(required=False, allow_null=True)
    slo_error_rate = serializers.FloatField(required=False, allow_null=True)
    slo_goodput_share = serializers.FloatField(required=False, allow_null=True)
    search = serializers.ChoiceField(
        choices=Plan.Search.choices, required=False,
        help_text="levels (run the plan's levels) or capacity (find the highest load meeting the SLO; "
                  "docs/capacity.md).")
    capacity_precision = serializers.FloatField(required=False)
    capacity_trials = serializers.IntegerField(required=False)
    capacity_budget_s = serializers.FloatField(required=False, allow_null=True)
    capacity_max_load = serializers.FloatField(required=False, allow_null=True)
    thresholds = serializers.ListField(
        child=serializers.JSONField(), required=False, allow_null=True, max_length=64,
        help_text="Pass/fail rules: each \"p99_ms <= 500 at 16, 32\" or {\"figure\", \"op\", \"limit\", \"levels\"}; "
                  "figures p50_ms, p90_ms, p99_ms, mean_ms, error_rate, qps, tokens_per_s. Null or []: the "
                  "default, error_rate <= 0.01 at every level. Answers give the thresholds in effect.")
    input_mode = serializers.ChoiceField(choices=Plan.Input.choices, required=False)
    corpus_text = serializers.CharField(required=False, allow_blank=True, max_length=10_000_000, trim_whitespace=False)
    processes = serializers.IntegerField(required=False)
    keep_samples = serializers.BooleanField(required=False)
    created = serializers.DateTimeField(read_only=True)
    updated = serializers.DateTimeField(read_only=True)

    class Meta:
        model = Plan

    def get_url(self, obj) -> str:
        return reverse("api:plan-detail", args=[obj.pk])

    def to_representation(self, instance):
        data = super().to_representation(instance)
        data["team"] = instance.team_id
        data["levels"] = list(instance.levels)
        data["thresholds"] = thresholds_of(instance.to_spec())
        return data

    def rule_errors(self, values, attrs, team, stored):
        # Whole numbers are stored as such (1, not 1.0), and the corpus without surrounding blank lines,
        # as the page stores them.
        values["levels"] = [int(v) if float(v).is_integer() else v for v in values["levels"] or []]
        values["corpus_text"] = (values["corpus_text"] or "").strip()
        return rules.plan_errors(values)


class LevelSerializer(serializers.ModelSerializer):
    class Meta:
        model = Level
        fields = [
            "index", "status", "concurrency", "rate", "duration_s", "requests_ok", "requests_failed", "qps",
            "texts_per_s", "tokens_per_s", "latency_mean_ms", "latency_p50_ms", "latency_p90_ms", "latency_p95_ms",
            "latency_p99_ms", "latency_p999_ms", "latency_max_ms", "error_rate", "goodput_per_s", "errors",
            "client_bound",
            "gpu_util_mean", "vram_peak_mib", "power_mean_w", "joules_per_1k_tokens",
        ]
        read_only_fields = fields


class RunSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()
    web_url = serializers.SerializerMethodField()
    created_by = serializers.SerializerMethodField()
    links = serializers.SerializerMethodField()
    aborted_at_level = serializers.FloatField(
        read_only=True, allow_null=True,
        help_text="The load of the level at which the abort policy stopped the sweep; null when it ran every level. "
                  "A run with status succeeded and a non-null aborted_at_level did not measure its later levels.")
    resumed_from = serializers.PrimaryKeyRelatedField(
        read_only=True, help_text="The run this one continues (it measured only the levels that run had not finished).")
    repeat_of = serializers.PrimaryKeyRelatedField(
        read_only=True, help_text="The run this one repeats (*Run again*: same target, plan and server config).")
    is_baseline = serializers.BooleanField(
        read_only=True, help_text="Marked as the baseline of its target and plan: later runs of the pair are "
                                  "checked for regressions against it (set with `links.baseline`).")
    verdict = serializers.SerializerMethodField(
        help_text="passed or failed: whether the server met the plan's thresholds (null until the run ends). "
                  "A CI gate checks verdict == \"passed\".")
    verdict_reasons = serializers.SerializerMethodField(
        help_text="Each breached threshold, \"target unreachable for N s\", levels not measured.")
    unreachable_s = serializers.SerializerMethodField(
        help_text="Seconds the target refused connections during the run, all levels together.")
    capacity = serializers.SerializerMethodField(
        help_text="A capacity search's answer (docs/capacity.md): load, lowest_fail, binding, cliff, figures, "
                  "status, reason; null for a plan of fixed levels.")

    class Meta:
        model = Run
        fields = [
            "id", "url", "web_url", "uuid", "team", "target", "plan", "label", "notes", "status", "status_reason",
            "source", "created_by", "created", "started", "finished", "worker_host", "heartbeat", "client_version",
            "cancel_requested", "is_baseline", "server_config", "target_config", "plan_config", "summary", "links",
            "aborted_at_level", "resumed_from", "repeat_of", "verdict", "verdict_reasons", "unreachable_s",
            "capacity",
        ]
        read_only_fields = fields

    def get_url(self, obj) -> str:
        return reverse("api:run-detail", args=[obj.pk])

    @extend_schema_field({"type": "object", "nullable": True, "additionalProperties": True})
    def get_capacity(self, obj) -> dict | None:
        return (obj.document or {}).get("capacity")

    def get_verdict(self, obj) -> str | None:
        return obj.judged() or None

    def get_verdict_reasons(self, obj) -> list[str]:
        return obj.verdict_reasons if obj.judged() else []

    def get_unreachable_s(self, obj) -> float | None:
        return obj.unreachable_s if obj.judged() else None

    def get_web_url(self, obj) -> str | None:
        return _web_url("run-detail", obj.pk)

    def get_created_by(self, obj) -> str | None:
        return obj.created_by.get_username() if obj.created_by_id else None

    def get_links(self, obj) -> dict:
        export = reverse("api:run-export", args=[obj.pk])
        return {
            "document": export,
            "csv": export + "?format=csv",
            "markdown": export + "?format=md",
            "samples": reverse("api:run-samples", args=[obj.pk]),
            "cancel": reverse("api:run-cancel", args=[obj.pk]),
            "resume": reverse("api:run-resume", args=[obj.pk]),
            "enqueue": reverse("api:run-enqueue", args=[obj.pk]),
            "repeat": reverse("api:run-repeat", args=[obj.pk]),
            "baseline": reverse("api:run-baseline", args=[obj.pk]),
        }


class RunDetailSerializer(RunSerializer):
    levels = LevelSerializer(many=True, read_only=True)

    class Meta(RunSerializer.Meta):
        fields = [*RunSerializer.Meta.fields, "progress", "levels"]
        read_only_fields = fields


@extend_schema_field(OpenApiTypes.INT)
class VisibleTargetField(serializers.PrimaryKeyRelatedField):
    def get_queryset(self):
        return visible_to_request(Target, self.context["request"])


@extend_schema_field(OpenApiTypes.INT)
class VisiblePlanField(serializers.PrimaryKeyRelatedField):
    def get_queryset(self):
        return visible_to_request(Plan, self.context["request"])


class RunStartSerializer(StrictMixin, serializers.Serializer):
    """POST /api/v1/runs/: start a sweep of a plan against a target."""

    target = VisibleTargetField(help_text="Target id.")
    plan = VisiblePlanField(help_text="Plan id (of the target's team).")
    label = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    notes = serializers.CharField(max_length=10_000, required=False, allow_blank=True, default="")
    server_config = serializers.DictField(
        child=serializers.CharField(max_length=1000, allow_blank=True), required=False, default=dict,
        help_text="What was different on the server for this run, e.g. {\"--max-running-requests\": \"128\"}.",
    )

    def validate_server_config(self, value):
        # The configuration key rule (portal.sweeps.rules), as for a target's launch config; values are free text.
        for key in value:
            message = rules.config_key_error(key)
            if message:
                raise serializers.ValidationError(message)
        return value

    def validate(self, attrs):
        errors = run_start_errors(attrs["target"], attrs["plan"])
        if errors:
            raise serializers.ValidationError(errors)
        return attrs


class ProbeStateSerializer(serializers.Serializer):
    """A target's connection test ("Test connection"): asked and waiting for a worker, or its answer."""

    pending = serializers.BooleanField(help_text="Asked and not answered yet: ask again in a few seconds.")
    requested_at = serializers.DateTimeField(allow_null=True, help_text="When the latest test was asked for.")
    waited_s = serializers.FloatField(allow_null=True, help_text="How long the pending test has waited.")
    queue = serializers.CharField(help_text="The worker queue that runs the target's tests and sweeps.")
    result = serializers.JSONField(
        allow_null=True,
        help_text="The answer (null while pending or never tested): ok, served_model, vector_length, "
                  "max_input_tokens, latency_ms, status, error, hint, url, base_urls (the URLs it tried), at, "
                  "worker_host.")
    tested_at = serializers.DateTimeField(allow_null=True, help_text="When the answer was given.")


class DateOrDateTimeField(serializers.DateTimeField):
    """An ISO 8601 date-time, or a plain date meaning its midnight (UTC)."""

    def to_internal_value(self, value):
        if isinstance(value, str) and len(value.strip()) == 10:
            value = value.strip() + "T00:00:00Z"
        return super().to_internal_value(value)


class RunFilterSerializer(serializers.Serializer):
    """Query parameters of GET /api/v1/runs/."""

    target = serializers.IntegerField(required=False, min_value=1, help_text="Target id.")
    plan = serializers.IntegerField(required=False, min_value=1, help_text="Plan id.")
    status = serializers.ChoiceField(choices=Run.Status.choices, required=False)
    source = serializers.ChoiceField(choices=Run.Source.choices, required=False)
    label = serializers.CharField(required=False, max_length=100, help_text="Label contains (case-insensitive).")
    # A choice, not a BooleanField: DRF reads a missing boolean in query parameters as false.
    is_baseline = serializers.ChoiceField(choices=["true", "false"], required=False,
                                          help_text="true: only baseline runs (one per target and plan).")
    verdict = serializers.ChoiceField(choices=["passed", "failed"], required=False,
                                      help_text="Only finished runs with this verdict.")
    created_after = DateOrDateTimeField(required=False, help_text="ISO 8601 date or date-time (inclusive).")
    created_before = DateOrDateTimeField(required=False, help_text="ISO 8601 date or date-time (exclusive).")


class RunStartedSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    url = serializers.CharField()
    web_url = serializers.CharField(allow_null=True)
    status = serializers.CharField()


class IngestedSerializer(RunStartedSerializer):
    plan = serializers.IntegerField(help_text="The plan the run was filed under.")
    plan_name = serializers.CharField()
    plan_note = serializers.CharField(
        help_text="Which plan the run went to and why: the plan of the document's name, or a new one named after "
                  "what differs (“smoke (levels 16-64, 3 s)”) when that plan has other settings.")
