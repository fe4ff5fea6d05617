"""Targets, plans, runs and levels.

Vocabulary (docs/architecture.md): a Target is one embedding service, a Plan the load to
apply, a Run one execution of a plan against a target, a Level one load step of a run.
The `to_spec()` methods produce the dictionaries the engine (`benchmarks`) takes; a Run
keeps copies of both so that editing a target or plan never rewrites history.
"""
import re
import uuid
from datetime import timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.db import models
from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce
from django.urls import reverse
from django.utils import timezone

from benchmarks.document import SCHEMA, key_figures, level_load, public_target
from benchmarks.plan import PLAN_BOUNDS, PLAN_DEFAULTS, plan_cells
from benchmarks.slo import DEFAULT_ERROR_RATE, limit_lines
from benchmarks.verdict import describe, judge_run, thresholds_of
from portal.accounts.models import Team
from portal.sweeps.bounds import checked_plan, sweep_seconds
from portal.sweeps.fields import EncryptedTextField

# A key of a launch or server configuration (`--max-running-requests`, `tp_size`): what the pages and
# the API accept, so a key saved through one is valid through the other.
CONFIG_KEY_RE = re.compile(r"^[A-Za-z0-9_.\-/:]+$")


def _iso(value) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


class TeamOwnedQuerySet(models.QuerySet):
    def for_user(self, user):
        """Rows of the teams the user belongs to; another team's rows are simply not found."""
        return self.filter(team__in=Team.objects.for_user(user))


def server_of(url: str) -> str:
    """The server a URL addresses (scheme://host:port), which is what a stored API key is bound to."""
    parts = urlsplit(str(url).strip())
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    except ValueError:
        port = None
    return f"{parts.scheme.lower()}://{(parts.hostname or '').rstrip('.')}:{port}"


def new_servers(old_urls, new_urls) -> list[str]:
    """The servers (scheme://host:port) among `new_urls` that none of `old_urls` addresses."""
    known = {server_of(u) for u in old_urls or []}
    added = []
    for url in new_urls or []:
        server = server_of(url)
        if server not in known and server not in added:
            added.append(server)
    return added


class QueueGrantQuerySet(models.QuerySet):
    def queues_for(self, team) -> list[str]:
        """The worker queues a team's targets may name: the open ones, then those granted to it."""
        open_queues = list(settings.EMBPERF_OPEN_QUEUES)
        granted = self.filter(team=team).order_by("queue").values_list("queue", flat=True) if team else []
        return open_queues + [q for q in granted if q not in open_queues]

    def allows(self, team, queue: str) -> bool:
        """Whether a target of this team may send its sweeps and probes to this queue."""
        return queue in settings.EMBPERF_OPEN_QUEUES or self.filter(team=team, queue=queue).exists()


class QueueGrant(models.Model):
    """An operator lets a team's targets use a worker queue (say, the queue of the team's GPU host).

    Queues in EMBPERF_OPEN_QUEUES (the default queue unless set) are open to every team without one."""

    team = models.ForeignKey(Team, models.CASCADE, related_name="queue_grants")
    queue = models.CharField(max_length=50, help_text="Celery queue name, e.g. gpu-host-1.")
    created = models.DateTimeField(auto_now_add=True)

    objects = QueueGrantQuerySet.as_manager()

    class Meta:
        ordering = ["queue", "team"]
        constraints = [models.UniqueConstraint(fields=["team", "queue"], name="unique_queue_grant")]

    def __str__(self) -> str:
        return f"{self.queue} for {self.team}"


class Target(models.Model):
    class Flavor(models.TextChoices):
        OPENAI = "openai", "OpenAI-compatible (/v1/embeddings)"
        TEI = "tei", "TEI native (/embed)"
        OLLAMA = "ollama", "Ollama (/api/embed)"

    class Engine(models.TextChoices):
        SGLANG = "sglang", "SGLang"
        VLLM = "vllm", "vLLM"
        TEI = "tei", "Text Embeddings Inference"
        INFINITY = "infinity", "Infinity"
        OLLAMA = "ollama", "Ollama"
        OPENAI = "openai", "OpenAI API"
        SIMULATOR = "simulator", "embperf simulator"
        OTHER = "other", "Other"

    class GpuSource(models.TextChoices):
        NONE = "none", "No GPU telemetry"
        NVML = "nvml", "Local NVML on the worker"
        PROMETHEUS = "prometheus", "Prometheus metrics URL"

    team = models.ForeignKey(Team, models.CASCADE, related_name="targets")
    name = models.CharField(max_length=100)
    flavor = models.CharField(max_length=10, choices=Flavor.choices, default=Flavor.OPENAI)
    base_urls = models.JSONField(default=list, help_text="One or more base URLs (replicas), used round-robin.")
    model_name = models.CharField(max_length=200)
    tokenizer = models.CharField(
        max_length=500, blank=True, default="",
        help_text="The model's tokenizer: a Hugging Face model id or a tokenizer.json path on the workers.",
    )
    api_key = EncryptedTextField(blank=True, default="")
    engine = models.CharField(max_length=20, choices=Engine.choices, default=Engine.OTHER)
    engine_version = models.CharField(max_length=50, blank=True, default="")
    launch_config = models.JSONField(default=dict, blank=True, help_text="Server launch flags as key/values.")
    gpu_source = models.CharField(max_length=12, choices=GpuSource.choices, default=GpuSource.NONE)
    gpu_indices = models.CharField(max_length=50, blank=True, default="", help_text="NVML GPU indices, e.g. 0,1")
    metrics_urls = models.JSONField(default=list, blank=True, help_text="Prometheus /metrics URLs to scrape.")
    queue = models.CharField(
        max_length=50, default="sweeps", help_text="Celery queue whose workers run this target's sweeps."
    )
    last_probe = models.JSONField(null=True, blank=True)
    probe_requested_at = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    objects = TeamOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs):
        # A probe answers for the URLs it tried: when they change, its result (and a test still waiting for
        # a worker) says nothing about the new servers, so both are forgotten.
        if self.pk is not None:
            stored = Target.objects.filter(pk=self.pk).values_list("base_urls", flat=True).first()
            if stored is not None and list(stored) != list(self.base_urls or []):
                self.last_probe = None
                self.probe_requested_at = None
                if kwargs.get("update_fields") is not None:
                    kwargs["update_fields"] = {*kwargs["update_fields"], "last_probe", "probe_requested_at"}
        super().save(*args, **kwargs)

    def get_absolute_url(self) -> str:
        return reverse("target-detail", args=[self.pk])

    def gpu_list(self) -> list[int]:
        return [int(x) for x in self.gpu_indices.replace(" ", "").split(",") if x != ""]

    def probe_answer(self, **answer) -> dict:
        """A probe's answer as stored in `last_probe`: with the base URLs it tried."""
        return {**answer, "base_urls": list(self.base_urls or [])}

    @property
    def current_probe(self) -> dict | None:
        """The last probe's answer if it tried the target's current base URLs; None when the target was never
        probed or only at other URLs (a probe stored before the URLs changed, or before probes kept theirs)."""
        probe = self.last_probe
        if not isinstance(probe, dict) or list(probe.get("base_urls") or []) != list(self.base_urls or []):
            return None
        return probe

    def to_spec(self, *, with_secret: bool = True) -> dict:
        """The target section of the engine's input (and, without the key, of the result document)."""
        spec = {
            "name": self.name,
            "flavor": self.flavor,
            "base_urls": list(self.base_urls),
            "model": self.model_name,
            "engine": self.engine,
            "engine_version": self.engine_version,
            "launch_config": dict(self.launch_config or {}),
            "gpu_source": self.gpu_source,
            "gpus": self.gpu_list(),
            "metrics_urls": list(self.metrics_urls or []),
            "queue": self.queue,
        }
        if self.tokenizer:
            spec["tokenizer"] = self.tokenizer
        if with_secret and self.api_key:
            spec["api_key"] = self.api_key
        return spec

    @classmethod
    def from_spec(cls, spec: dict, *, team: Team) -> "Target":
        """The unsaved Target that `to_spec()` describes (the inverse: a target section of a result
        document becomes a target of `team`). An engine this portal does not list becomes "other"."""
        engine = spec.get("engine") or cls.Engine.OTHER
        return cls(
            team=team,
            name=spec["name"],
            flavor=spec.get("flavor") or cls.Flavor.OPENAI,
            base_urls=list(spec.get("base_urls") or []),
            model_name=spec.get("model") or "",
            tokenizer=spec.get("tokenizer") or "",
            api_key=spec.get("api_key") or "",
            engine=engine if engine in cls.Engine.values else cls.Engine.OTHER,
            engine_version=spec.get("engine_version") or "",
            launch_config=dict(spec.get("launch_config") or {}),
            gpu_source=spec.get("gpu_source") or cls.GpuSource.NONE,
            gpu_indices=",".join(str(g) for g in spec.get("gpus") or []),
            metrics_urls=list(spec.get("metrics_urls") or []),
            **({"queue": spec["queue"]} if spec.get("queue") else {}),
        )


class Plan(models.Model):
    class Mode(models.TextChoices):
        CLOSED = "closed", "Closed loop (fixed concurrency)"
        OPEN = "open", "Open loop (fixed arrival rate)"

    class Arrival(models.TextChoices):
        CONSTANT = "constant", "Constant"
        POISSON = "poisson", "Poisson"

    class Encoding(models.TextChoices):
        FLOAT = "float", "float"
        BASE64 = "base64", "base64"

    class Search(models.TextChoices):
        LEVELS = "levels", "Levels"
        CAPACITY = "capacity", "Capacity"

    class Length(models.TextChoices):
        FIXED = "fixed", "Fixed"
        UNIFORM = "uniform", "Uniform"
        LOGNORMAL = "lognormal", "Log-normal"

    class ShapeField(models.TextChoices):
        NONE = "", "None"
        TOKENS = "tokens", "Tokens per text"
        BATCH = "batch", "Texts per request"
        ENCODING = "encoding", "Encoding"
        DIMENSIONS = "dimensions", "Dimensions"

    class Input(models.TextChoices):
        UNIQUE = "unique", "Unique text per request"
        CORPUS = "corpus", "Corpus (one text per line), no reuse"
        REPEAT = "repeat", "Identical text (cache study)"

    team = models.ForeignKey(Team, models.CASCADE, related_name="plans")
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True, default="")
    mode = models.CharField(max_length=10, choices=Mode.choices, default=PLAN_DEFAULTS["mode"])
    levels = models.JSONField(default=list, help_text="Concurrencies (closed loop) or rates in requests/s (open loop).")
    arrival = models.CharField(max_length=10, choices=Arrival.choices, default=PLAN_DEFAULTS["arrival"])
    max_in_flight = models.PositiveIntegerField(null=True, blank=True)
    warmup_s = models.FloatField(default=PLAN_DEFAULTS["warmup_s"])
    duration_s = models.FloatField(default=PLAN_DEFAULTS["duration_s"])
    tokens = models.PositiveIntegerField(default=PLAN_DEFAULTS["tokens"], help_text="Input tokens per text.")
    # Each text's length (benchmarks.inputs.Lengths): `tokens` is the fixed length, a log-normal's median.
    length = models.CharField(max_length=10, choices=Length.choices, default=PLAN_DEFAULTS["length"])
    tokens_min = models.PositiveIntegerField(null=True, blank=True)
    tokens_max = models.PositiveIntegerField(null=True, blank=True)
    tokens_sigma = models.FloatField(null=True, blank=True)
    batch = models.PositiveIntegerField(default=PLAN_DEFAULTS["batch"], help_text="Texts per request.")
    # A shape axis (benchmarks.plan): the plan's levels are run once per value of this field, a grid.
    shape_field = models.CharField(max_length=12, choices=ShapeField.choices, blank=True, default="")
    shape_values = models.JSONField(null=True, blank=True, default=None)
    dimensions = models.PositiveIntegerField(null=True, blank=True)
    encoding = models.CharField(max_length=10, choices=Encoding.choices, default=PLAN_DEFAULTS["encoding"])
    timeout_s = models.FloatField(default=PLAN_DEFAULTS["timeout_s"])
    abort_error_rate = models.FloatField(default=PLAN_DEFAULTS["abort_error_rate"])
    abort_window_s = models.FloatField(default=PLAN_DEFAULTS["abort_window_s"])
    slo_p99_ms = models.FloatField(null=True, blank=True)
    # The rest of the SLO (benchmarks.plan): goodput counts against the first latency limit set, a
    # capacity search (search="capacity", docs/capacity.md) passes a load only when every limit holds.
    slo_p90_ms = models.FloatField(null=True, blank=True)
    slo_p50_ms = models.FloatField(null=True, blank=True)
    slo_mean_ms = models.FloatField(null=True, blank=True)
    slo_error_rate = models.FloatField(null=True, blank=True)
    slo_goodput_share = models.FloatField(null=True, blank=True)
    search = models.CharField(max_length=10, choices=Search.choices, default=PLAN_DEFAULTS["search"])
    capacity_precision = models.FloatField(default=PLAN_DEFAULTS["capacity_precision"])
    capacity_trials = models.PositiveIntegerField(default=PLAN_DEFAULTS["capacity_trials"])
    capacity_budget_s = models.FloatField(null=True, blank=True)
    capacity_max_load = models.FloatField(null=True, blank=True)
    input_mode = models.CharField(max_length=10, choices=Input.choices, default=PLAN_DEFAULTS["input"])
    corpus_text = models.TextField(blank=True, default="")
    processes = models.PositiveIntegerField(default=PLAN_DEFAULTS["processes"])
    keep_samples = models.BooleanField(
        default=PLAN_DEFAULTS["keep_samples"], help_text="Keep every request's timing (raw samples)."
    )
    # Pass/fail rules (benchmarks.plan, "thresholds"): null is the default, error rate <= 1 % at every level.
    thresholds = models.JSONField(null=True, blank=True, default=None)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    objects = TeamOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("plan-detail", args=[self.pk])

    def to_spec(self) -> dict:
        """The plan section of the engine's input and of the result document."""
        return {
            "name": self.name,
            "mode": self.mode,
            "levels": list(self.levels),
            "arrival": self.arrival,
            "max_in_flight": self.max_in_flight,
            "warmup_s": self.warmup_s,
            "duration_s": self.duration_s,
            "tokens": self.tokens,
            "batch": self.batch,
            "dimensions": self.dimensions,
            "encoding": self.encoding,
            "timeout_s": self.timeout_s,
            "abort_error_rate": self.abort_error_rate,
            "abort_window_s": self.abort_window_effective_s,
            **{name: getattr(self, name) for name in (*self.SLO_FIELDS, *self.SEARCH_FIELDS, *self.LENGTH_FIELDS)},
            "shape_field": self.shape_field or None,
            "shape_values": list(self.shape_values) if self.shape_field and self.shape_values else None,
            "input": self.input_mode,
            "corpus": self.corpus_text.splitlines() if self.input_mode == self.Input.CORPUS else None,
            "processes": self.processes,
            "keep_samples": self.keep_samples,
            "thresholds": None if self.thresholds is None else list(self.thresholds),
        }

    # The SLO's limits and the capacity search's settings (benchmarks.plan): one name in model and engine.
    SLO_FIELDS = ("slo_p99_ms", "slo_p90_ms", "slo_p50_ms", "slo_mean_ms", "slo_error_rate", "slo_goodput_share")
    SEARCH_FIELDS = ("search", "capacity_precision", "capacity_trials", "capacity_budget_s", "capacity_max_load")
    LENGTH_FIELDS = ("length", "tokens_min", "tokens_max", "tokens_sigma")
    # Plan fields whose engine name (to_spec) is the model's name too.
    SPEC_FIELDS = ("mode", "arrival", "max_in_flight", "warmup_s", "duration_s", "tokens", "batch", "dimensions",
                   "encoding", "timeout_s", "abort_error_rate", "abort_window_s", "processes", "keep_samples",
                   "thresholds", *SLO_FIELDS, *SEARCH_FIELDS, *LENGTH_FIELDS)
    # What a person sets on a plan, on the page and through the API, in the form's order.
    EDITABLE_FIELDS = ("name", "description", "search", "mode", "levels", "arrival", "max_in_flight", "warmup_s",
                       "duration_s", "shape_field", "shape_values", "tokens", *LENGTH_FIELDS, "batch", "dimensions",
                       "encoding", "timeout_s",
                       "abort_error_rate", "abort_window_s", *SLO_FIELDS, *SEARCH_FIELDS[1:], "thresholds",
                       "input_mode", "corpus_text", "processes", "keep_samples")

    @classmethod
    def from_spec(cls, spec: dict, *, team: Team) -> "Plan":
        """The unsaved Plan that `to_spec()` describes (the inverse: a plan section of a result document
        becomes a plan of `team`). Values the spec leaves out, or gives as null, take the model's defaults."""
        fields = {key: spec[key] for key in cls.SPEC_FIELDS if spec.get(key) is not None}
        if spec.get("shape_field"):
            fields.update(shape_field=spec["shape_field"], shape_values=list(spec.get("shape_values") or []))
        if spec.get("input"):
            fields["input_mode"] = spec["input"]
        if spec.get("corpus"):
            fields["corpus_text"] = "\n".join(spec["corpus"])
        return cls(team=team, name=spec["name"], levels=list(spec["levels"]), **fields)

    def slo_lines(self) -> list[str]:
        """The SLO's limits in a reader's words ("p99 ≤ 500 ms"); a capacity search's default error rate
        included, since its search applies it."""
        values = {name: getattr(self, name) for name in self.SLO_FIELDS}
        if self.search == self.Search.CAPACITY and values["slo_error_rate"] is None:
            values["slo_error_rate"] = DEFAULT_ERROR_RATE
        return limit_lines(values)

    def cell_count(self) -> int:
        """How many levels a run of the plan measures: each level once per shape value."""
        return len(plan_cells(self.to_spec())) if self.search != self.Search.CAPACITY else 0

    def length_text(self) -> str:
        """Tokens per text in a reader's words: '512', 'uniform 256 to 768', 'log-normal, median 512, sigma 0.5'
        (the engine's defaults filled in where the plan leaves an end or the spread blank)."""
        if self.length == self.Length.FIXED:
            return f"{self.tokens:,}"
        checked = checked_plan(self.to_spec())[0]
        if self.length == self.Length.UNIFORM:
            return f"uniform {checked['tokens_min']:,} to {checked['tokens_max']:,}"
        return f"log-normal, median {self.tokens:,}, sigma {checked['tokens_sigma']:g}"

    def threshold_lines(self) -> list[str]:
        """The pass/fail thresholds in effect, in a reader's words ("p99 latency <= 500 ms at 16")."""
        return [describe(t) for t in thresholds_of(self.to_spec())]

    @property
    def abort_window_effective_s(self) -> float:
        """The abort window as the engine applies it (benchmarks.plan): never longer than a level's measured
        duration, which a longer window could never fill, and never below the window's own minimum."""
        if self.abort_window_s is None or self.duration_s is None:
            return self.abort_window_s
        return min(self.abort_window_s, max(self.duration_s, PLAN_BOUNDS["abort_window_s"].minimum))

    def expected_seconds(self) -> float:
        """The longest this plan may take (every level's warm-up, duration and a last timeout; a capacity
        search's budget, this installation's run limit when it sets none)."""
        return sweep_seconds(self.to_spec())


class RunQuerySet(TeamOwnedQuerySet):
    """Besides the team filter, the recovery rules: a running run is alive while its worker's
    heartbeat (Run.heartbeat, written every EMBPERF_HEARTBEAT_S) is younger than EMBPERF_STALE_AFTER_S;
    past that its worker is taken for dead, whatever its host or node name."""

    def active(self):
        return self.filter(status__in=[Run.Status.QUEUED, Run.Status.RUNNING])

    def running(self):
        return self.filter(status=Run.Status.RUNNING)

    def with_verdict(self, verdict: str):
        """Runs whose verdict is `verdict` ("passed" or "failed"). A run that ended failed, cancelled or
        interrupted by a path that judged nothing yet fails when judged (not every level was measured)."""
        if verdict == "failed":
            unfinished = (Run.Status.FAILED, Run.Status.CANCELLED, Run.Status.INTERRUPTED)
            return self.filter(Q(verdict="failed") | Q(verdict="", status__in=unfinished))
        return self.filter(verdict=verdict)

    def stale(self, *, stale_after_s: float | None = None):
        """Running runs whose worker has been silent for longer than `stale_after_s` seconds while the
        database answered (`silent_before`): none at all shortly after a database outage."""
        cutoff = silent_before(stale_after_s)
        if cutoff is None:
            return self.none()
        silent = Q(heartbeat__lt=cutoff) | Q(heartbeat__isnull=True, started__lt=cutoff) | Q(
            heartbeat__isnull=True, started__isnull=True)
        return self.running().filter(silent)

    def live(self, *, stale_after_s: float | None = None):
        """Running runs whose worker is still heard from."""
        return self.running().exclude(pk__in=self.stale(stale_after_s=stale_after_s).values("pk"))

    def end_as(self, status: str, reason: str) -> list[int]:
        """End these runs if they still run; their finish time is their last heartbeat (when the
        worker was last heard from), not now. Returns the ids that were ended here."""
        ended = []
        for pk in self.running().values_list("pk", flat=True):
            # One row at a time, still conditional on "running": a run that ended meanwhile keeps its end.
            if Run.objects.filter(pk=pk, status=Run.Status.RUNNING).update(
                    status=status, status_reason=reason,
                    finished=Coalesce(F("heartbeat"), F("started"), Value(timezone.now()))):
                ended.append(pk)
                Run.objects.get(pk=pk).judge()
        return ended

    def interrupt_stale(self, *, stale_after_s: float | None = None) -> list[int]:
        """Mark running runs whose worker went silent `interrupted`, each with a reason naming its worker."""
        seconds = stale_after(stale_after_s)
        ended = []
        for run in self.stale(stale_after_s=seconds).only("pk", "worker_host"):
            reason = (f"The worker {run.worker_host or '(unknown)'} stopped reporting for over {seconds:.0f} s; "
                      "it probably died or was killed. Levels finished before that are kept; resume the run "
                      "to measure the rest.")
            ended += Run.objects.filter(pk=run.pk).stale(stale_after_s=seconds).end_as(
                Run.Status.INTERRUPTED, reason)
        return ended

    def interrupt_of_node(self, node: str) -> list[int]:
        """A worker node just started: whatever it was running before is gone."""
        reason = (f"The worker {node} stopped while this run was in progress (it was restarted or killed). "
                  "Levels finished before that are kept; resume the run to measure the rest.")
        return self.running().filter(worker_host=node).end_as(Run.Status.INTERRUPTED, reason)


def stale_after(seconds: float | None = None) -> float:
    """The heartbeat age past which a running run's worker is taken for dead (EMBPERF_STALE_AFTER_S)."""
    return float(seconds if seconds is not None else settings.EMBPERF_STALE_AFTER_S)


# When this process last saw the database answer again after failing (set by workers.database).
_database_back_at = None


def note_database_back(at=None) -> None:
    """Record that the database answers again after an outage this process saw; workers also report it
    in their WorkerPresence row, so every process (a waiting run's task, the web's cancel) knows."""
    global _database_back_at
    at = at or timezone.now()
    if _database_back_at is None or at > _database_back_at:
        _database_back_at = at


def database_back_here():
    """The latest end of a database outage this process saw, or None."""
    return _database_back_at


def database_back_at():
    """The latest end of a database outage known here or reported by any worker, or None."""
    reported = WorkerPresence.objects.aggregate(latest=models.Max("database_back_at"))["latest"]
    known = [at for at in (_database_back_at, reported) if at is not None]
    return max(known) if known else None


def silent_before(stale_after_s: float | None = None):
    """The one rule for "silent": a running run whose last heartbeat is older than the returned time
    is taken for dead; None means no run may be judged silent now.

    A database outage stops every live worker's heartbeat with it, so silence counts only once the
    database has answered again for a whole stale bound (every worker had that long to report).
    The stale-run sweeper, a run waiting for its target and a cancel all ask this function."""
    seconds = stale_after(stale_after_s)
    now = timezone.now()
    back = database_back_at()
    if back is not None and (now - back).total_seconds() < seconds:
        return None
    return now - timedelta(seconds=seconds)


class Run(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"
        INTERRUPTED = "interrupted", "Interrupted"

    class Source(models.TextChoices):
        PORTAL = "portal", "Portal"
        API = "api", "API"
        INGEST = "ingest", "Ingested document"

    FINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.INTERRUPTED)

    # Unique within a team: a document ingested by two teams is two runs, and neither learns of the other.
    uuid = models.UUIDField(default=uuid.uuid4, editable=False, db_index=True)
    team = models.ForeignKey(Team, models.CASCADE, related_name="runs")
    target = models.ForeignKey(Target, models.SET_NULL, null=True, blank=True, related_name="runs")
    plan = models.ForeignKey(Plan, models.SET_NULL, null=True, blank=True, related_name="runs")
    # Snapshots taken when the run was created (target without its API key).
    target_config = models.JSONField(default=dict)
    plan_config = models.JSONField(default=dict)
    server_config = models.JSONField(
        default=dict, blank=True, help_text="Free key/values, e.g. --max-running-requests 128"
    )
    label = models.CharField(max_length=100, blank=True, default="")
    notes = models.TextField(blank=True, default="")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED)
    status_reason = models.TextField(blank=True, default="")
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.PORTAL)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+")
    created = models.DateTimeField(auto_now_add=True)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)
    worker_host = models.CharField(max_length=200, blank=True, default="")
    client_version = models.CharField(max_length=50, blank=True, default="")
    cancel_requested = models.BooleanField(default=False)
    # The worker's liveness: written with the progress, at least every EMBPERF_HEARTBEAT_S seconds.
    heartbeat = models.DateTimeField(null=True, blank=True)
    progress = models.JSONField(default=dict, blank=True)
    # Run-wide sections of the result document (run, probe, inputs, client, telemetry notes), as recorded
    # by sweeps/documents.py; the levels have rows of their own and the summary this column only.
    document = models.JSONField(default=dict, blank=True)
    summary = models.JSONField(default=dict, blank=True)
    is_baseline = models.BooleanField(default=False)
    # When the reconciler sent this queued run's message again because the broker had lost it (once).
    resent_at = models.DateTimeField(null=True, blank=True)
    # Whether the server met the plan's thresholds (benchmarks.verdict), set when the run ends ("" before):
    # verdict_detail holds the judgement's reasons, unreachable seconds and the thresholds judged.
    verdict = models.CharField(max_length=10, blank=True, default="",
                               choices=[("passed", "Passed"), ("failed", "Failed")])
    verdict_detail = models.JSONField(default=dict, blank=True)
    # A resumed run measures only the levels the run it continues had not finished (docs/api.md, Resume).
    resumed_from = models.ForeignKey("self", models.SET_NULL, null=True, blank=True, related_name="resumed_by")
    # "Run again": a repeat of this run, with its target, plan and server config (a run of its segment).
    repeat_of = models.ForeignKey("self", models.SET_NULL, null=True, blank=True, related_name="repeats")

    objects = RunQuerySet.as_manager()

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [
            models.Index(fields=["team", "-created"]),
            models.Index(fields=["target", "plan", "-created"]),
            models.Index(fields=["status"]),
        ]
        constraints = [models.UniqueConstraint(fields=["team", "uuid"], name="unique_run_uuid_per_team")]

    def __str__(self) -> str:
        return f"Run {self.pk} ({self.label or self.target_config.get('name', '')})"

    def get_absolute_url(self) -> str:
        return reverse("run-detail", args=[self.pk])

    @property
    def is_final(self) -> bool:
        return self.status in self.FINAL

    def last_heard(self):
        """When the worker last reported on this run (its heartbeat, else its start)."""
        return self.heartbeat or self.started

    def heartbeat_age_s(self) -> float | None:
        """Seconds since the worker last reported; None for a run no worker has started."""
        beat = self.last_heard()
        return None if beat is None else max(0.0, (timezone.now() - beat).total_seconds())

    def worker_is_silent(self) -> bool:
        """True for a running run whose worker has not reported within EMBPERF_STALE_AFTER_S
        (the rule of `silent_before`, which waits after a database outage)."""
        if self.status != self.Status.RUNNING:
            return False
        cutoff = silent_before()
        beat = self.last_heard()
        return cutoff is not None and (beat is None or beat < cutoff)

    @property
    def aborted_at_level(self) -> float | None:
        """The load of the level at which the abort policy stopped the sweep, or None."""
        return ((self.document or {}).get("run") or {}).get("aborted_at_level")

    def judge(self, *, save: bool = True) -> str:
        """Judge a finished run against its plan's thresholds (benchmarks.verdict) from its stored levels,
        store the verdict and return it ("" for a run that has not ended)."""
        if not self.is_final:
            verdict, detail = "", {}
        else:
            levels = [level.data for level in self.levels.order_by("index")]
            result = judge_run(self.plan_config or {}, levels, status=self.status,
                               aborted_at_level=self.aborted_at_level, capacity=(self.document or {}).get("capacity"))
            verdict = result.pop("verdict")
            detail = result
        self.verdict, self.verdict_detail = verdict, detail
        if save:
            Run.objects.filter(pk=self.pk).update(verdict=verdict, verdict_detail=detail)
        return verdict

    def judged(self) -> str:
        """The stored verdict, judging the run first when it ended by a path that stored none."""
        if not self.is_final:
            return ""
        return self.verdict or self.judge()

    @property
    def verdict_reasons(self) -> list[str]:
        """Each breached threshold, unreachable time and unmeasured level behind a failed verdict."""
        return list((self.verdict_detail or {}).get("reasons") or [])

    @property
    def unreachable_s(self) -> float:
        """Seconds the target refused connections during the run, all levels together."""
        return float((self.verdict_detail or {}).get("unreachable_s") or 0.0)

    @property
    def never_started(self) -> bool:
        """True for a run the broker refused: it failed before any worker took it, so it can be queued again."""
        return self.status == self.Status.FAILED and self.started is None and self.source != self.Source.INGEST

    def finished_levels(self) -> list["Level"]:
        """The levels this run finished, from its first up to (not including) its first unfinished one."""
        done = []
        for level in self.levels.order_by("index"):
            if level.index != len(done) or level.status != Level.Status.COMPLETED:
                break
            done.append(level)
        return done

    def earlier_levels(self) -> list[tuple["Run", "Level"]]:
        """For a resumed run: the finished levels of the runs it continues, oldest run first."""
        chain = []
        seen = {self.pk}
        run = self.resumed_from
        while run is not None and run.pk not in seen:
            seen.add(run.pk)
            chain.append(run)
            run = run.resumed_from
        earlier = []
        for run in reversed(chain):
            earlier += [(run, level) for level in run.finished_levels()]
        return earlier

    @property
    def queue(self) -> str:
        """The worker queue the run was sent to (from its target snapshot)."""
        return self.target_config.get("queue") or settings.CELERY_TASK_DEFAULT_QUEUE

    def queue_position(self) -> int | None:
        """1 when the run is next in its queue, 2 when one run is ahead, ...; None unless queued.

        Counts queued runs of every team on the same queue: a shared queue is shared in order."""
        if self.status != self.Status.QUEUED:
            return None
        ahead = Run.objects.filter(status=self.Status.QUEUED, target_config__queue=self.queue).filter(
            models.Q(created__lt=self.created) | models.Q(created=self.created, pk__lt=self.pk))
        return ahead.count() + 1

    def queue_text(self) -> str:
        """'Waiting for a worker on queue “q”: 3rd in line (2 runs ahead).' for a queued run, else ''."""
        position = self.queue_position()
        if position is None:
            return ""
        ahead = position - 1
        line = "next in line" if ahead == 0 else f"{ahead} run{'s' if ahead != 1 else ''} ahead of it"
        return f"Waiting for a worker on queue “{self.queue}”: position {position}, {line}."

    def to_document(self) -> dict:
        """The run's result document (embperf.run/1): what every export gives and ingest takes back.

        The run's own columns (id, uuid, label, notes, server configuration, status, times, the target
        and plan snapshots, the summary) are the truth, so a label edited later or a run that stopped
        before finishing exports as it stands; the other run-wide sections are as recorded
        (sweeps/documents.py) and the levels come from the Level rows, in order."""
        stored = dict(self.document or {})
        section = dict(stored.get("run") or {})
        section.update({
            "id": self.pk, "uuid": str(self.uuid), "label": self.label, "notes": self.notes,
            "server_config": dict(self.server_config or {}), "status": self.status,
            "status_reason": self.status_reason,
            "started_at": _iso(self.started) or section.get("started_at"),
            "finished_at": _iso(self.finished) or section.get("finished_at"),
            "aborted_at_level": section.get("aborted_at_level"),
            "verdict": self.judged() or None, "verdict_reasons": self.verdict_reasons,
            "unreachable_s": self.unreachable_s if self.verdict else section.get("unreachable_s"),
        })
        if self.resumed_from_id is not None:
            original = self.resumed_from
            section["resumed_from"] = {"id": original.pk, "uuid": str(original.uuid),
                                       "levels": [level.load for _, level in self.earlier_levels()]}
        else:
            # A run ingested from a resumed run keeps what its document said it continued.
            section.setdefault("resumed_from", None)
        return {
            **stored,
            "schema": SCHEMA,
            "run": section,
            "target": public_target(self.target_config or {}),
            "plan": dict(self.plan_config or {}),
            "levels": [level.data for level in self.levels.order_by("index")],
            "summary": dict(self.summary or {}),
        }

    @property
    def figures(self) -> dict:
        """Peak, knee and SLO level, as the engine summarised the run (see benchmarks.document.summarize)."""
        return key_figures(self.summary)

    @property
    def capacity_answer(self) -> dict | None:
        """A capacity search's answer (the document's "capacity", docs/capacity.md); None for a plan of levels."""
        return (self.document or {}).get("capacity") or None

    @property
    def level_key(self) -> str:
        """'concurrency' for closed-loop plans, 'rate' for open-loop ones."""
        return "rate" if self.plan_config.get("mode") == "open" else "concurrency"


class Level(models.Model):
    """One load step of a run: the headline figures as columns, the full level document in `data`."""

    run = models.ForeignKey(Run, models.CASCADE, related_name="levels")
    class Status(models.TextChoices):
        COMPLETED = "completed", "Completed"
        ABORTED = "aborted", "Aborted"  # the error-abort policy stopped it
        CANCELLED = "cancelled", "Cancelled"  # a person stopped the run during this level

    index = models.PositiveIntegerField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.COMPLETED)
    concurrency = models.FloatField(null=True, blank=True)
    rate = models.FloatField(null=True, blank=True)
    duration_s = models.FloatField(default=0)
    requests_ok = models.PositiveIntegerField(default=0)
    requests_failed = models.PositiveIntegerField(default=0)
    qps = models.FloatField(default=0)
    texts_per_s = models.FloatField(default=0)
    tokens_per_s = models.FloatField(default=0)
    latency_mean_ms = models.FloatField(null=True, blank=True)
    latency_p50_ms = models.FloatField(null=True, blank=True)
    latency_p90_ms = models.FloatField(null=True, blank=True)
    latency_p95_ms = models.FloatField(null=True, blank=True)
    latency_p99_ms = models.FloatField(null=True, blank=True)
    latency_p999_ms = models.FloatField(null=True, blank=True)
    latency_max_ms = models.FloatField(null=True, blank=True)
    error_rate = models.FloatField(default=0)
    # The value of the plan's shape axis this level ran with ("512", "base64"); "" without an axis.
    shape_value = models.CharField(max_length=32, blank=True, default="")
    # Requests/s whose latency met the plan's SLO; null for a plan without a latency SLO.
    goodput_per_s = models.FloatField(null=True, blank=True)
    errors = models.JSONField(default=dict, blank=True)
    client_bound = models.BooleanField(default=False)
    gpu_util_mean = models.FloatField(null=True, blank=True)
    vram_peak_mib = models.FloatField(null=True, blank=True)
    power_mean_w = models.FloatField(null=True, blank=True)
    joules_per_1k_tokens = models.FloatField(null=True, blank=True)
    data = models.JSONField(default=dict)

    class Meta:
        ordering = ["run", "index"]
        constraints = [models.UniqueConstraint(fields=["run", "index"], name="unique_run_level")]

    def __str__(self) -> str:
        return f"{self.run_id}#{self.index}"

    @property
    def load(self) -> float | None:
        """Concurrency (closed loop) or arrival rate (open loop)."""
        return level_load({"concurrency": self.concurrency, "rate": self.rate})

    @property
    def cell(self) -> tuple[str, float | None]:
        """Where the level sits in its run's grid: (shape value, load); ("", load) without a shape axis.
        Runs are compared cell by cell."""
        return (self.shape_value, self.load)


class RawSampleChunk(models.Model):
    """A zlib-compressed block of raw-sample CSV lines of one level (see samples.py).

    Kept apart from Level so that the main tables stay small; read back in id order.
    """

    run = models.ForeignKey(Run, models.CASCADE, related_name="sample_chunks")
    level_index = models.PositiveIntegerField()
    count = models.PositiveIntegerField()
    data = models.BinaryField()

    class Meta:
        # Table and index keep the names they were created with, so moving the model lost no sample.
        db_table = "api_rawsamplechunk"
        indexes = [models.Index(fields=["run", "level_index", "id"], name="api_rawsamp_run_id_1181e2_idx")]

    def __str__(self) -> str:
        return f"{self.run_id}#{self.level_index}: {self.count} samples"


class WorkerPresence(models.Model):
    """A Celery worker node and the queues it consumes, as last reported by its own timer.

    The run page reads it to say "no worker is listening on queue X" for a run that stays queued.
    """

    node = models.CharField(max_length=200, unique=True)
    queues = models.JSONField(default=list)
    seen = models.DateTimeField()
    # When this worker last saw the database answer again after an outage (the rule for "silent").
    database_back_at = models.DateTimeField(null=True, blank=True)
    # Since when the worker has had a free pool process (None: all busy), and the runs whose messages
    # it holds (running or waiting): what tells a lost message from one still queued (services).
    free_since = models.DateTimeField(null=True, blank=True)
    holding = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["node"]

    def __str__(self) -> str:
        return self.node

    # Rows of workers not seen for this long are dropped (node names change with hosts and restarts).
    FORGET_AFTER = timedelta(days=7)

    @classmethod
    def report(cls, node: str, queues: list[str], *, database_back_at=None, free_since=None,
               holding: list[int] | None = None) -> None:
        now = timezone.now()
        cls.objects.update_or_create(node=node, defaults={
            "queues": sorted(queues), "seen": now, "database_back_at": database_back_at, "free_since": free_since,
            "holding": sorted(holding or [])})
        cls.objects.filter(seen__lt=now - cls.FORGET_AFTER).delete()

    @classmethod
    def listening_on(cls, queue: str) -> bool:
        """Whether a worker reported consuming `queue` within the stale bound."""
        cutoff = timezone.now() - timedelta(seconds=stale_after())
        return any(queue in (row.queues or []) for row in cls.objects.filter(seen__gte=cutoff).only("queues"))
