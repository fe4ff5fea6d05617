"""Forms for targets, plans, starting a run and filtering the run list."""
from django import forms
from django.core.validators import MaxValueValidator, MinValueValidator

from benchmarks.plan import PLAN_DEFAULTS
from portal.accounts.access import teams_for_user
from portal.front.fields import KeyValueField, LevelsField, ShapeValuesField, ThresholdsField, URLListField
from portal.sweeps import rules
from portal.sweeps.models import Plan, QueueGrant, Run, Target
from portal.sweeps.services import run_start_errors


class TeamChoiceMixin:
    """Adds a `team` choice limited to the user's writable teams, hidden when there is only one."""

    def _setup_team(self, user, creating: bool):
        if not creating:
            self.fields.pop("team", None)
            return
        teams = teams_for_user(user, write=True)
        field = self.fields["team"]
        field.queryset = teams
        field.empty_label = None
        first = teams.first()
        if first is not None:
            field.initial = first.pk
        self._default_team = first
        if teams.count() <= 1:
            # One team: nothing to choose, so the form works without the field too.
            field.widget = forms.HiddenInput()
            field.required = False

    def clean_team(self):
        team = self.cleaned_data.get("team") or getattr(self, "_default_team", None)
        if team is None:
            raise forms.ValidationError("You are not an owner or member of any team, so you cannot create this.")
        return team


class TargetForm(TeamChoiceMixin, forms.ModelForm):
    base_urls = URLListField(
        label="Base URLs",
        help_text="One per line; several URLs are replicas used round-robin. E.g. http://10.0.0.5:30000/v1",
    )
    api_key = forms.CharField(
        label="API key",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Sent as a bearer token. Stored encrypted and never shown again.",
    )
    clear_api_key = forms.BooleanField(label="Remove the stored API key", required=False)
    launch_config = KeyValueField(
        label="Server launch config",
        required=False,
        help_text="How the server was started, one flag per line: “--max-running-requests 128” or “key=value”.",
    )
    metrics_urls = URLListField(
        label="Metrics URLs",
        required=False,
        help_text="Prometheus /metrics URLs (server or DCGM exporter), one per line.",
    )

    class Meta:
        model = Target
        fields = [
            "team", "name", "flavor", "base_urls", "model_name", "tokenizer", "api_key", "engine", "engine_version",
            "launch_config", "gpu_source", "gpu_indices", "metrics_urls", "queue",
        ]
        labels = {"model_name": "Model", "gpu_source": "GPU telemetry", "gpu_indices": "GPU indices"}
        help_texts = {
            "model_name": "The model name sent in each request, e.g. Qwen/Qwen3-Embedding-4B.",
            "tokenizer": "Optional. The model's tokenizer, to count tokens exactly rather than trust the server's "
            "usage: a Hugging Face model id (fetched once by the worker), or a tokenizer file in the workers' "
            "tokenizer folder, such as bge/tokenizer.json, where the operator keeps one.",
        }

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        creating = self.instance.pk is None
        self._setup_team(user, creating)
        self.has_stored_key = bool(not creating and self.instance.api_key)
        if self.has_stored_key:
            self.fields["api_key"].help_text = "A key is stored. Leave blank to keep it; type a new one to replace it."
        else:
            self.fields.pop("clear_api_key")
        # The model's value must never travel back to the browser.
        self.initial["api_key"] = ""
        team = self.instance.team if not creating else getattr(self, "_default_team", None)
        if team is not None:
            self.fields["queue"].help_text = (
                "Celery queue whose workers run this target's sweeps; open to this team: "
                + ", ".join(QueueGrant.objects.queues_for(team)) + ".")

    # The rules are the target's (portal.sweeps.rules); the form reads the text boxes and maps the messages.
    def clean_base_urls(self):
        return rules.clean_outbound_urls(self.cleaned_data.get("base_urls"))

    def clean_metrics_urls(self):
        return rules.clean_outbound_urls(self.cleaned_data.get("metrics_urls"))

    def clean_gpu_indices(self):
        return rules.clean_gpu_indices(self.cleaned_data.get("gpu_indices", ""))

    def clean_queue(self):
        return rules.clean_queue(self.cleaned_data.get("queue", ""))

    def clean(self):
        cleaned = super().clean()
        creating = self.instance.pk is None
        team = cleaned.get("team") if creating else self.instance.team
        keeps_key = self.has_stored_key and not cleaned.get("api_key") and not cleaned.get("clear_api_key")
        errors = rules.target_errors(cleaned, team=team, stored=None if creating else self.instance,
                                     keeps_stored_key=keeps_key)
        for field, messages in errors.items():
            self.add_error(field, messages)
        return cleaned

    def save(self, commit=True):
        target = super().save(commit=False)
        new_key = self.cleaned_data.get("api_key", "")
        if new_key:
            target.api_key = new_key
        elif self.cleaned_data.get("clear_api_key"):
            target.api_key = ""
        elif target.pk is not None:
            # Blank means "keep": ModelForm copied the blank onto the instance, so restore the stored key.
            target.api_key = Target.objects.get(pk=target.pk).api_key
        if commit:
            target.save()
        return target


# Plan settings a form may leave out: blank means the plan rule's default.
OPTIONAL_WITH_DEFAULT = ("search", "capacity_precision", "capacity_trials", "length")


class PlanForm(TeamChoiceMixin, forms.ModelForm):
    levels = LevelsField(label="Levels", required=False)
    shape_values = ShapeValuesField(
        label="…its values",
        help_text="Comma-separated, run in the order given: the whole list of levels runs once per value, e.g. "
                  "tokens 32, 128, 512, 2048; texts per request 1, 8, 32; encoding float, base64.")
    thresholds = ThresholdsField(
        label="Thresholds (pass/fail)",
        help_text="One per line: figure <= or >= number, optionally “at” some levels, e.g. “p99_ms <= 500”, "
                  "“qps >= 200 at 16, 32”. Figures: p50_ms, p90_ms, p99_ms, mean_ms, error_rate (0 to 1), qps, "
                  "tokens_per_s. A run that breaks one fails its verdict; a level above its error-rate "
                  "threshold never counts for the peak, knee or SLO level. Blank: error_rate <= 0.01 at every level.")

    class Meta:
        model = Plan
        fields = ["team", *Plan.EDITABLE_FIELDS]
        labels = {
            "warmup_s": "Warm-up per level (s)",
            "duration_s": "Measured duration per level (s)",
            "tokens": "Tokens per text",
            "batch": "Texts per request",
            "dimensions": "Dimensions",
            "timeout_s": "Request timeout (s)",
            "abort_error_rate": "Abort a level above this error rate",
            "abort_window_s": "…measured over (s)",
            "slo_p99_ms": "Latency SLO: p99 (ms)",
            "slo_p90_ms": "…p90 (ms)",
            "slo_p50_ms": "…p50 (ms)",
            "slo_mean_ms": "…mean (ms)",
            "slo_error_rate": "SLO error rate",
            "slo_goodput_share": "SLO goodput share",
            "search": "Search",
            "shape_field": "Sweep a request shape",
            "length": "Text lengths",
            "tokens_min": "Shortest text (tokens)",
            "tokens_max": "Longest text (tokens)",
            "tokens_sigma": "Spread (sigma)",
            "capacity_precision": "Capacity precision",
            "capacity_trials": "Trials at the boundary",
            "capacity_budget_s": "Capacity time budget (s)",
            "capacity_max_load": "Highest load to try",
            "input_mode": "Inputs",
            "corpus_text": "Corpus",
            "max_in_flight": "Max in flight (open loop)",
            "processes": "Client processes",
        }
        help_texts = {
            "dimensions": "Leave blank for the model's default vector length.",
            "max_in_flight": "Leave blank for this installation's maximum (EMBPERF_MAX_CONCURRENCY).",
            "abort_error_rate": "0 to 1; 0.5 stops a level when half the requests fail.",
            "abort_window_s": "Seconds in a row above that rate. Never longer than the measured duration: a "
                              "longer window is cut to it, since a level could never fill it and the policy "
                              "would never fire.",
            "corpus_text": "One text per line; used when Inputs is Corpus.",
            "slo_p99_ms": "Optional; the summary reports the highest level that met it, and every level its "
                          "goodput (requests/s whose latency met it).",
            "slo_p90_ms": "Optional limits of their own; goodput counts against the first set of p99, p90, p50, "
                          "mean.",
            "slo_error_rate": "0 to 1; a capacity search passes a load only at or below it (0.01 when blank).",
            "slo_goodput_share": "0 to 1, optional: a load passes only when this share of its requests met the "
                                 "latency limit.",
            "search": "Capacity: embperf finds the highest load (req/s in open loop, concurrency in closed loop) "
                      "that meets the SLO, probing and bisecting; the levels are then its own (docs/capacity.md).",
            "shape_field": "Optional: run the levels once per value of this field (a grid of shape × load); "
                           "the run page draws one curve per value and compare aligns on (shape, load).",
            "capacity_precision": "Bisect until the lowest failing load is within this share of the capacity "
                                  "(0.05: 5 %; at least 1 in concurrency).",
            "capacity_trials": "A load at the boundary passes only when it passes this many times in a row.",
            "capacity_budget_s": "The search stops here and answers with the best so far. Blank: this "
                                 "installation's run limit.",
            "capacity_max_load": "Blank: this installation's maximum rate or concurrency.",
            "tokens": "The length of every text; the median of a log-normal length.",
            "length": "Fixed, or drawn per text so a mix of lengths shows what padding and batching do; each "
                      "level reports the token counts it sent (p50, p90, max).",
            "tokens_min": "Uniform only. Blank: half the tokens per text.",
            "tokens_max": "Uniform only. Blank: one and a half times the tokens per text.",
            "tokens_sigma": "Log-normal only: the spread of ln(length). Blank: 0.5 (p10 to p90 about 0.53× to "
                            "1.9× the median).",
            "batch": "",
        }
        widgets = {
            "description": forms.Textarea(attrs={"rows": 2, "class": "prose"}),
            "corpus_text": forms.Textarea(attrs={"rows": 4}),
        }

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._setup_team(user, self.instance.pk is None)
        for name in rules.PLAN_SPEC_FIELDS.values():
            field = self.fields.get(name)
            if isinstance(field, forms.IntegerField | forms.FloatField):
                # The plan rule owns the ranges (and their messages); the form field only reads a number.
                field.validators = [v for v in field.validators
                                    if not isinstance(v, MinValueValidator | MaxValueValidator)]
        for name in OPTIONAL_WITH_DEFAULT:
            # Left out or blank: the plan rule's default (a form posted before these settings existed).
            self.fields[name].required = False
        # Short labels fit the form's column; the help text says what each mode holds fixed.
        self.fields["mode"].choices = [(Plan.Mode.CLOSED, "Closed loop"), (Plan.Mode.OPEN, "Open loop")]
        self.fields["mode"].help_text = "Closed: fixed concurrency. Open: fixed arrival rate (req/s)."

    def clean(self):
        """Every plan value is checked by the plan rule (benchmarks.plan), so the API, ingest, the CLI
        and the worker refuse the same values with the same messages."""
        cleaned = super().clean()
        for name in OPTIONAL_WITH_DEFAULT:
            if name in cleaned and cleaned[name] in (None, ""):
                cleaned[name] = PLAN_DEFAULTS[name]
        for field, messages in rules.plan_errors(cleaned).items():
            # A field that could not even be read already says so; the rule speaks about values only.
            if field in self.fields and field not in self.errors:
                for message in messages:
                    self.add_error(field, message)
        return cleaned


class RunForm(forms.Form):
    target = forms.ModelChoiceField(queryset=Target.objects.none(), empty_label="Choose a target…")
    plan = forms.ModelChoiceField(queryset=Plan.objects.none(), empty_label="Choose a plan…")
    label = forms.CharField(
        max_length=100, required=False, help_text="A short name to find this run again, e.g. “mrr-128”."
    )
    notes = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3, "class": "prose"}))
    server_config = KeyValueField(
        label="Server config",
        required=False,
        help_text="What was different on the server for this run, one per line: "
        "“--max-running-requests 128” or “key=value”.",
    )
    # "Run again": the run this one repeats (the view checks it is the user's to see).
    repeat_of = forms.IntegerField(required=False, widget=forms.HiddenInput, min_value=1)

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        teams = teams_for_user(user, write=True)
        self.fields["target"].queryset = Target.objects.filter(team__in=teams).select_related("team")
        self.fields["plan"].queryset = Plan.objects.filter(team__in=teams).select_related("team")
        if teams.count() > 1:
            # With several teams, say which team each choice belongs to.
            self.fields["target"].label_from_instance = lambda t: f"{t.name} ({t.team.name})"
            self.fields["plan"].label_from_instance = lambda p: f"{p.name} ({p.team.name})"

    def clean(self):
        cleaned = super().clean()
        for field, messages in run_start_errors(cleaned.get("target"), cleaned.get("plan")).items():
            for message in messages:
                self.add_error(field, message)
        return cleaned


class RunFilterForm(forms.Form):
    target = forms.ModelChoiceField(queryset=Target.objects.none(), required=False, empty_label="All targets")
    plan = forms.ModelChoiceField(queryset=Plan.objects.none(), required=False, empty_label="All plans")
    status = forms.ChoiceField(choices=[("", "Any status"), *Run.Status.choices], required=False)
    label = forms.CharField(required=False, widget=forms.TextInput(attrs={"placeholder": "Label contains…"}))

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["target"].queryset = Target.objects.for_user(user).distinct()
        self.fields["plan"].queryset = Plan.objects.for_user(user).distinct()

    def filter(self, runs):
        """Narrow a run queryset by the valid filters given."""
        if not self.is_valid():
            return runs
        data = self.cleaned_data
        if data.get("target"):
            runs = runs.filter(target=data["target"])
        if data.get("plan"):
            runs = runs.filter(plan=data["plan"])
        if data.get("status"):
            runs = runs.filter(status=data["status"])
        if data.get("label"):
            runs = runs.filter(label__icontains=data["label"].strip())
        return runs
