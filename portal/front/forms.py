"""Forms for targets, plans, starting a run and filtering the run list."""
import re

from django import forms
from django.conf import settings

from portal.front.access import teams_for_user
from portal.front.fields import KeyValueField, LevelsField, URLListField, format_number
from portal.sweeps.models import Plan, Run, Target
from portal.sweeps.services import plan_misfits

_QUEUE_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


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
            "usage: a Hugging Face model id (fetched once by the worker) or a tokenizer.json path on the worker.",
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

    def clean_gpu_indices(self):
        raw = self.cleaned_data.get("gpu_indices", "").replace(" ", "")
        if not raw:
            return ""
        parts = raw.split(",")
        if not all(p.isascii() and p.isdigit() for p in parts):
            raise forms.ValidationError("Write GPU indices as whole numbers separated by commas, e.g. 0,1.")
        if len(set(parts)) != len(parts):
            raise forms.ValidationError("A GPU index is listed twice.")
        return ",".join(str(int(p)) for p in parts)

    def clean_queue(self):
        queue = self.cleaned_data.get("queue", "").strip()
        if not _QUEUE_RE.match(queue):
            raise forms.ValidationError("Queue names use letters, digits, - _ and . only, e.g. sweeps or gpu-host-1.")
        return queue

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("gpu_source") == Target.GpuSource.PROMETHEUS and not cleaned.get("metrics_urls"):
            self.add_error("metrics_urls", "GPU telemetry from Prometheus needs at least one metrics URL.")
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


class PlanForm(TeamChoiceMixin, forms.ModelForm):
    levels = LevelsField(label="Levels")

    class Meta:
        model = Plan
        fields = [
            "team", "name", "description", "mode", "levels", "arrival", "max_in_flight", "warmup_s", "duration_s",
            "tokens", "batch", "dimensions", "encoding", "timeout_s", "abort_error_rate", "abort_window_s",
            "slo_p99_ms", "input_mode", "corpus_text", "processes", "keep_samples",
        ]
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
            "input_mode": "Inputs",
            "corpus_text": "Corpus",
            "max_in_flight": "Max in flight (open loop)",
            "processes": "Client processes",
        }
        help_texts = {
            "dimensions": "Leave blank for the model's default vector length.",
            "abort_error_rate": "0 to 1; 0.5 stops a level when half the requests fail.",
            "corpus_text": "One text per line; used when Inputs is Corpus.",
            "slo_p99_ms": "Optional; the summary reports the highest level that met it.",
            "tokens": "",
            "batch": "",
        }
        widgets = {
            "description": forms.Textarea(attrs={"rows": 2, "class": "prose"}),
            "corpus_text": forms.Textarea(attrs={"rows": 4}),
        }

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._setup_team(user, self.instance.pk is None)
        # Short labels fit the form's column; the help text says what each mode holds fixed.
        self.fields["mode"].choices = [(Plan.Mode.CLOSED, "Closed loop"), (Plan.Mode.OPEN, "Open loop")]
        self.fields["mode"].help_text = "Closed: fixed concurrency. Open: fixed arrival rate (req/s)."

    def _positive(self, name, what, *, allow_zero=False):
        value = self.cleaned_data.get(name)
        if value is None:
            return value
        if value < 0 or (value == 0 and not allow_zero):
            raise forms.ValidationError(f"{what} must be {'zero or more' if allow_zero else 'greater than zero'}.")
        return value

    def clean_duration_s(self):
        value = self._positive("duration_s", "The duration")
        limit = settings.EMBPERF_MAX_LEVEL_SECONDS
        if value is not None and value > limit:
            raise forms.ValidationError(
                f"At most {limit} s per level on this installation (EMBPERF_MAX_LEVEL_SECONDS)."
            )
        return value

    def clean_warmup_s(self):
        return self._positive("warmup_s", "The warm-up", allow_zero=True)

    def clean_timeout_s(self):
        return self._positive("timeout_s", "The timeout")

    def clean_tokens(self):
        return self._positive("tokens", "Tokens per text")

    def clean_batch(self):
        return self._positive("batch", "Texts per request")

    def clean_dimensions(self):
        value = self.cleaned_data.get("dimensions")
        if value is not None and value <= 0:
            raise forms.ValidationError("Dimensions must be greater than zero, or blank for the model's default.")
        return value

    def clean_processes(self):
        return self._positive("processes", "Client processes")

    def clean_abort_window_s(self):
        return self._positive("abort_window_s", "The abort window")

    def clean_abort_error_rate(self):
        value = self.cleaned_data.get("abort_error_rate")
        if value is not None and not 0 < value <= 1:
            raise forms.ValidationError("Give a fraction between 0 and 1, e.g. 0.5 for half the requests failing.")
        return value

    def clean_slo_p99_ms(self):
        value = self.cleaned_data.get("slo_p99_ms")
        if value is not None and value <= 0:
            raise forms.ValidationError("The SLO must be greater than zero milliseconds, or blank for none.")
        return value

    def clean_max_in_flight(self):
        value = self.cleaned_data.get("max_in_flight")
        if value is not None:
            if value <= 0:
                raise forms.ValidationError("Max in flight must be greater than zero, or blank for no cap.")
            if value > settings.EMBPERF_MAX_CONCURRENCY:
                raise forms.ValidationError(
                    f"At most {settings.EMBPERF_MAX_CONCURRENCY} on this installation (EMBPERF_MAX_CONCURRENCY)."
                )
        return value

    def clean(self):
        cleaned = super().clean()
        levels = cleaned.get("levels")
        mode = cleaned.get("mode")
        if levels:
            max_levels = settings.EMBPERF_MAX_LEVELS
            if len(levels) > max_levels:
                self.add_error(
                    "levels", f"At most {max_levels} levels per plan (you entered {len(levels)}; EMBPERF_MAX_LEVELS)."
                )
            elif mode == Plan.Mode.CLOSED:
                fractional = [v for v in levels if not float(v).is_integer()]
                too_high = [v for v in levels if v > settings.EMBPERF_MAX_CONCURRENCY]
                if fractional:
                    self.add_error(
                        "levels",
                        f"Concurrency is a number of requests in flight, so a whole number; "
                        f"“{format_number(fractional[0])}” is not.",
                    )
                elif too_high:
                    self.add_error(
                        "levels",
                        f"Concurrency {format_number(too_high[0])} is above this installation's maximum of "
                        f"{settings.EMBPERF_MAX_CONCURRENCY} (EMBPERF_MAX_CONCURRENCY).",
                    )
        if cleaned.get("input_mode") == Plan.Input.CORPUS and not cleaned.get("corpus_text", "").strip():
            self.add_error("corpus_text", "Paste the corpus, one text per line, or choose another input mode.")
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
        target, plan = cleaned.get("target"), cleaned.get("plan")
        if target and plan and target.team_id != plan.team_id:
            self.add_error(
                "plan", f"This plan belongs to {plan.team.name}; pick a plan of {target.team.name}, the target's team."
            )
        elif target and plan:
            for problem in plan_misfits(target, plan):
                self.add_error("plan", problem)
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
