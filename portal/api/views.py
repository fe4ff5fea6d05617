"""The REST API under /api/v1/: teams, targets, plans, runs, exports, compare, ingest.

Every queryset comes from portal.accounts.access, so another team's object is a 404 and a token sees
no more than its user. Writing needs an owner or member role in the object's team (403 otherwise).
"""
from django.conf import settings
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from portal.accounts.access import api_teams, check_write, visible_to_request
from portal.accounts.models import Team
from portal.api import export
from portal.api.ingest import AlreadyIngested, IngestError, ingest_document
from portal.api.renderers import CSVRenderer, MarkdownRenderer
from portal.api.serializers import (
    IngestedSerializer,
    PlanSerializer,
    ProbeStateSerializer,
    RunDetailSerializer,
    RunFilterSerializer,
    RunSerializer,
    RunStartedSerializer,
    RunStartSerializer,
    TargetSerializer,
    TeamSerializer,
)
from portal.sweeps import samples, services
from portal.sweeps.models import Plan, Run, Target

ERROR_400 = OpenApiResponse(description="Invalid input: the body names each field and what is wrong with it.")
ERROR_404 = OpenApiResponse(description="No such object among your teams' objects.")
READ_ONLY = OpenApiResponse(description="Read-only role.")
FORMAT_PARAM = OpenApiParameter(
    "format", str, enum=["json", "csv", "md"], description="json (default), csv or md (Markdown table)."
)


class TeamViewSet(viewsets.ReadOnlyModelViewSet):
    """The teams this request can see, with your role in each."""

    serializer_class = TeamSerializer
    queryset = Team.objects.none()  # for the schema; requests use get_queryset()
    lookup_value_regex = r"\d+"

    def get_queryset(self):
        return api_teams(self.request).order_by("name", "id")


class TeamOwnedViewSet(viewsets.ModelViewSet):
    """Targets and plans: list/create in your teams, change and delete with a writing role."""

    http_method_names = ["get", "post", "put", "patch", "delete", "head", "options"]
    lookup_value_regex = r"\d+"

    def update(self, request, *args, **kwargs):
        check_write(request, self.get_object().team)
        return super().update(request, *args, **kwargs)

    def perform_destroy(self, instance):
        check_write(self.request, instance.team)
        instance.delete()


@extend_schema_view(
    create=extend_schema(responses={201: TargetSerializer, 400: ERROR_400}),
    update=extend_schema(responses={200: TargetSerializer, 400: ERROR_400, 404: ERROR_404}),
    partial_update=extend_schema(responses={200: TargetSerializer, 400: ERROR_400, 404: ERROR_404}),
)
class TargetViewSet(TeamOwnedViewSet):
    """Embedding services to benchmark. `api_key` is write-only; `has_api_key` says whether one is stored."""

    serializer_class = TargetSerializer
    queryset = Target.objects.none()

    def get_queryset(self):
        return visible_to_request(Target, self.request).order_by("name", "id")

    @extend_schema(
        methods=["GET"], request=None, responses={200: ProbeStateSerializer, 404: ERROR_404},
        description="The target's connection test: pending, or the last answer for its current base URLs.")
    @extend_schema(
        methods=["POST"], request=None,
        responses={202: ProbeStateSerializer, 200: ProbeStateSerializer, 403: READ_ONLY, 404: ERROR_404,
                   429: OpenApiResponse(description="Too many tests (EMBPERF_PROBE_RATE per user, shared with the "
                                                    "page's Test connection): `detail` says when to try again.")},
        description="Test connection: a worker on the target's queue sends it one request. 202 while it waits "
                    "for a worker (GET this URL until `pending` is false); 200 when it was answered at once (a "
                    "queue the team may not use, a broker that is down).")
    @action(detail=True, methods=["get", "post"])
    def probe(self, request, pk=None):
        """Test connection, as the target page's button does; GET reads the answer."""
        target = self.get_object()
        if request.method == "POST":
            check_write(request, target.team)
            throttle = services.ProbeThrottle()
            if not throttle.allow_request(request, self):
                detail, wait = throttle.refusal()
                return Response({"detail": detail, "retry_after_s": wait}, status=status.HTTP_429_TOO_MANY_REQUESTS,
                                headers={"Retry-After": str(wait)})
            services.request_probe(target)
            target.refresh_from_db()
        state = services.probe_state(target)
        code = status.HTTP_202_ACCEPTED if request.method == "POST" and state["pending"] else status.HTTP_200_OK
        return Response(ProbeStateSerializer(state).data, status=code)


@extend_schema_view(
    create=extend_schema(responses={201: PlanSerializer, 400: ERROR_400}),
    update=extend_schema(responses={200: PlanSerializer, 400: ERROR_400, 404: ERROR_404}),
    partial_update=extend_schema(responses={200: PlanSerializer, 400: ERROR_400, 404: ERROR_404}),
)
class PlanViewSet(TeamOwnedViewSet):
    """Test plans: the load levels and request shape of a sweep."""

    serializer_class = PlanSerializer
    queryset = Plan.objects.none()

    def get_queryset(self):
        return visible_to_request(Plan, self.request).order_by("name", "id")


START_400 = OpenApiResponse(description="The start rules refuse this work (queue grant, plan bounds, team): "
                                        "`target` or `plan` says why, as a new start would.")
STATE_409 = OpenApiResponse(description="The run is not in a state that allows this; `detail` says why.")
BROKER_503 = OpenApiResponse(
    description="The task broker refused the run: `detail` gives the reason; the run is saved as failed "
                "without having started and can be queued again (`links.enqueue`).")


def _broker_refused(request, run: Run) -> Response:
    data = RunSerializer(run, context={"request": request}).data
    body = {"detail": run.status_reason, "id": run.pk, "url": data["url"], "web_url": data["web_url"],
            "status": run.status, "links": {"enqueue": data["links"]["enqueue"]}}
    return Response(body, status=status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": "30"})


def _started(request, run: Run) -> Response:
    """201 with the new run's address, or 503 when the broker refused it."""
    if run.never_started:
        return _broker_refused(request, run)
    data = RunSerializer(run, context={"request": request}).data
    body = RunStartedSerializer(
        {"id": run.pk, "url": data["url"], "web_url": data["web_url"], "status": run.status}).data
    return Response(body, status=status.HTTP_201_CREATED, headers={"Location": body["url"]})


def _attachment(response, filename: str):
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@extend_schema_view(
    list=extend_schema(parameters=[RunFilterSerializer]),
    create=extend_schema(
        request=RunStartSerializer,
        responses={201: RunStartedSerializer, 400: ERROR_400, 403: READ_ONLY, 503: BROKER_503},
    ),
)
class RunViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet):
    """Runs: list with filters, one run with its levels, start a sweep, cancel, export."""

    queryset = Run.objects.none()
    lookup_value_regex = r"\d+"

    def get_serializer_class(self):
        if self.action == "retrieve":
            return RunDetailSerializer
        if self.action == "create":
            return RunStartSerializer
        return RunSerializer

    def get_throttles(self):
        if self.action in ("create", "resume", "enqueue"):  # each publishes a sweep
            self.throttle_scope = "start"
        return super().get_throttles()

    def get_queryset(self):
        runs = visible_to_request(Run, self.request).select_related("created_by")
        if self.action == "retrieve":
            runs = runs.prefetch_related("levels")
        if self.action != "list":
            return runs
        params = RunFilterSerializer(data=self.request.query_params)
        params.is_valid(raise_exception=True)
        f = params.validated_data
        if "target" in f:
            runs = runs.filter(target_id=f["target"])
        if "plan" in f:
            runs = runs.filter(plan_id=f["plan"])
        if "status" in f:
            runs = runs.filter(status=f["status"])
        if "source" in f:
            runs = runs.filter(source=f["source"])
        if "is_baseline" in f:
            runs = runs.filter(is_baseline=f["is_baseline"] == "true")
        if "verdict" in f:
            runs = runs.with_verdict(f["verdict"])
        if f.get("label"):
            runs = runs.filter(label__icontains=f["label"].strip())
        if "created_after" in f:
            runs = runs.filter(created__gte=f["created_after"])
        if "created_before" in f:
            runs = runs.filter(created__lt=f["created_before"])
        return runs.order_by("-created", "-id")

    def create(self, request, *args, **kwargs):
        serializer = RunStartSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        check_write(request, data["target"].team)
        run = services.start_run(
            target=data["target"], plan=data["plan"], user=request.user, label=data["label"], notes=data["notes"],
            server_config=data["server_config"], source=Run.Source.API,
        )
        return _started(request, run)

    @extend_schema(request=None, responses={201: RunStartedSerializer, 400: START_400, 403: READ_ONLY,
                                            404: ERROR_404, 409: STATE_409, 503: BROKER_503})
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        """Continue an interrupted or failed run from its first unfinished level, as a new run linked to it
        (`resumed_from`) that measures only the remaining levels."""
        run = self.get_object()
        check_write(request, run.team)
        try:
            new = services.resume_run(run, user=request.user, source=Run.Source.API)
        except services.RunRefused as exc:  # the start rules, as a start answers them
            return Response(exc.errors, status=status.HTTP_400_BAD_REQUEST)
        except services.RunStateError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return _started(request, new)

    @extend_schema(request=None, responses={201: RunStartedSerializer, 400: START_400, 403: READ_ONLY,
                                            404: ERROR_404, 409: STATE_409, 503: BROKER_503})
    @action(detail=True, methods=["post"])
    def repeat(self, request, pk=None):
        """Run again: a new run of this run's target and plan with its server config and label, recorded as
        its repeat (`repeat_of`), checked like any start (400 names what stops it)."""
        run = self.get_object()
        check_write(request, run.team)
        try:
            new = services.repeat_run(run, user=request.user, source=Run.Source.API)
        except services.RunRefused as exc:  # the start rules, as a start answers them
            return Response(exc.errors, status=status.HTTP_400_BAD_REQUEST)
        except services.RunStateError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return _started(request, new)

    @extend_schema(methods=["POST"], request=None, responses={200: RunSerializer, 403: READ_ONLY, 404: ERROR_404,
                                                              409: STATE_409},
                   description="Make this run the baseline of its target and plan (the one before, if any, stops "
                               "being it); later runs are checked for regressions against it.")
    @extend_schema(methods=["DELETE"], request=None, responses={200: RunSerializer, 403: READ_ONLY, 404: ERROR_404},
                   description="Stop this run being the baseline of its target and plan.")
    @action(detail=True, methods=["post", "delete"])
    def baseline(self, request, pk=None):
        """Mark or unmark this run as its target and plan's baseline (the history page's *Set baseline*)."""
        run = self.get_object()
        check_write(request, run.team)
        if request.method == "DELETE":
            run = services.clear_baseline(run)
        else:
            try:
                run = services.set_baseline(run)
            except services.RunStateError as exc:
                return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response(RunSerializer(run, context={"request": request}).data)

    @extend_schema(request=None, responses={200: RunSerializer, 400: START_400, 403: READ_ONLY, 404: ERROR_404,
                                            409: STATE_409, 503: BROKER_503})
    @action(detail=True, methods=["post"])
    def enqueue(self, request, pk=None):
        """Queue again a run the broker refused when it was started (it never reached a worker), or send
        again a queued run whose broker message was lost."""
        run = self.get_object()
        check_write(request, run.team)
        try:
            run = services.requeue_run(run)
        except services.RunRefused as exc:
            return Response(exc.errors, status=status.HTTP_400_BAD_REQUEST)
        except services.RunStateError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        if run.never_started:
            return _broker_refused(request, run)
        return Response(RunSerializer(run, context={"request": request}).data)

    @extend_schema(request=None, responses={200: RunSerializer, 403: OpenApiResponse(description="Read-only role."),
                                            404: ERROR_404})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Cancel a queued or running run; a run that already ended is returned unchanged."""
        run = self.get_object()
        check_write(request, run.team)
        if not run.is_final:
            run = services.request_cancel(run)
        return Response(RunSerializer(run, context={"request": request}).data)

    @extend_schema(
        parameters=[FORMAT_PARAM],
        responses={
            (200, "application/json"): OpenApiResponse(OpenApiTypes.OBJECT, description="embperf.run/1 document"),
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="One row per level"),
            (200, "text/markdown"): OpenApiResponse(OpenApiTypes.STR, description="Markdown table"),
            404: ERROR_404,
        },
    )
    @action(detail=True, methods=["get"], url_path="export",
            renderer_classes=[JSONRenderer, CSVRenderer, MarkdownRenderer, BrowsableAPIRenderer])
    def export(self, request, pk=None):
        """The run as a result document (JSON), a CSV row per level, or a Markdown table."""
        run = self.get_object()
        fmt = request.accepted_renderer.format
        if fmt == "csv":
            return _attachment(Response(export.levels_csv([run])), f"embperf-run-{run.pk}.csv")
        if fmt == "md":
            return Response(export.levels_markdown(run))
        return Response(run.to_document())

    @extend_schema(
        responses={(200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="Streamed raw samples"),
                   404: ERROR_404},
    )
    @action(detail=True, methods=["get"], renderer_classes=[JSONRenderer, CSVRenderer])
    def samples(self, request, pk=None):
        """Every request's timing as CSV, streamed (only when the run's plan kept raw samples)."""
        run = self.get_object()
        if not samples.has_samples(run):
            return Response(
                {"detail": f"Run {run.pk} kept no raw samples: its plan had keep_samples off, "
                           "or it ended before a level finished."},
                status=status.HTTP_404_NOT_FOUND,
            )
        response = StreamingHttpResponse(samples.iter_samples_csv(run), content_type="text/csv; charset=utf-8")
        return _attachment(response, f"embperf-run-{run.pk}-samples.csv")


class CompareQuerySerializer(serializers.Serializer):
    runs = serializers.CharField(help_text="Comma-separated run ids, e.g. 12,15,16.", max_length=500)
    baseline = serializers.IntegerField(required=False, min_value=1,
                                        help_text="Run id to compare against, one of `runs`; defaults to the first.")
    metrics = serializers.CharField(required=False, max_length=200,
                                    help_text="Figures to compare, e.g. qps,mean_ms,p99_ms (default: every one).")
    levels = serializers.CharField(required=False, max_length=500,
                                   help_text="Levels (loads) to compare, e.g. 16,32,64 (default: every one).")

    def validate_metrics(self, value):
        from portal.history.comparison import ComparisonError, parse_metrics

        try:
            return parse_metrics(value)
        except ComparisonError as exc:
            raise serializers.ValidationError(str(exc)) from None

    def validate_levels(self, value):
        from portal.history.comparison import ComparisonError, parse_levels

        try:
            return parse_levels(value)
        except ComparisonError as exc:
            raise serializers.ValidationError(str(exc)) from None

    def validate(self, attrs):
        baseline = attrs.get("baseline")
        if baseline is not None and baseline not in attrs["runs"]:
            raise serializers.ValidationError({"baseline": [
                f"Run {baseline} is not one of the compared runs; add it to runs or leave baseline out."]})
        return attrs

    def validate_runs(self, value):
        from portal.history.comparison import ComparisonError, parse_run_ids

        try:
            ids = parse_run_ids([value])
        except ComparisonError as exc:
            raise serializers.ValidationError(str(exc)) from None
        if len(ids) < 2:
            raise serializers.ValidationError("Give at least two run ids, e.g. runs=12,15.")
        return ids


class CompareView(APIView):
    """GET /api/v1/compare/?runs=ID,ID&baseline=ID[&format=csv|md]: the comparison the compare page shows."""

    renderer_classes = [JSONRenderer, CSVRenderer, MarkdownRenderer, BrowsableAPIRenderer]

    @extend_schema(
        parameters=[CompareQuerySerializer, FORMAT_PARAM],
        responses={
            (200, "application/json"): OpenApiResponse(OpenApiTypes.OBJECT, description="Comparison"),
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR),
            (200, "text/markdown"): OpenApiResponse(OpenApiTypes.STR),
            400: ERROR_400,
            404: ERROR_404,
        },
    )
    def get(self, request):
        from portal.history.comparison import ComparisonError, build_comparison

        params = CompareQuerySerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        ids = params.validated_data["runs"]
        baseline_id = params.validated_data.get("baseline") or ids[0]
        found = {run.pk: run for run in visible_to_request(Run, request).filter(pk__in=ids)}
        missing = [i for i in ids if i not in found]
        if missing:
            return Response({"detail": f"No run {missing[0]} among your teams' runs."},
                            status=status.HTTP_404_NOT_FOUND)
        try:
            comparison = build_comparison([found[i] for i in ids], found[baseline_id],
                                          metrics=params.validated_data.get("metrics"),
                                          loads=params.validated_data.get("levels"))
        except ComparisonError as exc:
            raise ValidationError({exc.field: [str(exc)]}) from None
        fmt = request.accepted_renderer.format
        if fmt == "csv":
            return _attachment(Response(comparison.to_csv()), "embperf-compare.csv")
        if fmt == "md":
            return Response(comparison.to_markdown())
        return Response(comparison.to_dict())


class IngestQuerySerializer(serializers.Serializer):
    team = serializers.IntegerField(required=False, min_value=1,
                                    help_text="Team id; optional when you can write to one team only.")


class IngestView(APIView):
    """POST a result document (embperf.run/1, e.g. the CLI's --json output) to add it to history."""

    throttle_scope = "ingest"

    @property
    def max_body_bytes(self) -> int:
        return settings.EMBPERF_API_MAX_INGEST_BYTES

    @extend_schema(
        parameters=[IngestQuerySerializer],
        request={"application/json": OpenApiTypes.OBJECT},
        responses={201: IngestedSerializer, 400: ERROR_400,
                   409: OpenApiResponse(description="This run (by run.uuid) is already in history.")},
    )
    def post(self, request):
        params = IngestQuerySerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        writable = api_teams(request, write=True)
        team_id = params.validated_data.get("team")
        if team_id is not None:
            team = writable.filter(pk=team_id).first()
            if team is None:
                raise ValidationError({"team": [f"You cannot add runs to team {team_id} (unknown or read-only)."]})
        else:
            teams = list(writable[:2])
            if len(teams) != 1:
                raise ValidationError({"team": [
                    "Required: you belong to several teams; add ?team=ID." if teams
                    else "You have no team where you may add runs."]})
            team = teams[0]
        try:
            run = ingest_document(request.data, team=team, user=request.user)
        except IngestError as exc:
            return Response(exc.errors, status=status.HTTP_400_BAD_REQUEST)
        except AlreadyIngested as exc:
            url = RunSerializer(exc.run, context={"request": request}).data["url"]
            return Response({"detail": str(exc), "id": exc.run.pk, "url": url}, status=status.HTTP_409_CONFLICT)
        data = RunSerializer(run, context={"request": request}).data
        body = {"id": run.pk, "url": data["url"], "web_url": data["web_url"], "status": run.status,
                "plan": run.plan_id, "plan_name": run.plan.name, "plan_note": run.plan_note}
        return Response(body, status=status.HTTP_201_CREATED, headers={"Location": body["url"]})
