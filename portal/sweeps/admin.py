from django.contrib import admin

from portal.sweeps.models import Level, Plan, QueueGrant, Run, Target


@admin.register(QueueGrant)
class QueueGrantAdmin(admin.ModelAdmin):
    list_display = ["queue", "team", "created"]
    list_filter = ["queue"]
    search_fields = ["queue", "team__name"]


@admin.register(Target)
class TargetAdmin(admin.ModelAdmin):
    list_display = ["name", "team", "flavor", "engine", "model_name", "queue", "updated"]
    list_filter = ["flavor", "engine", "team"]
    search_fields = ["name", "model_name"]
    exclude = ["api_key"]


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = ["name", "team", "mode", "levels", "duration_s", "tokens", "batch"]
    list_filter = ["mode", "team"]
    search_fields = ["name"]


class LevelInline(admin.TabularInline):
    model = Level
    extra = 0
    fields = ["index", "concurrency", "rate", "qps", "latency_p50_ms", "latency_p99_ms", "error_rate"]
    readonly_fields = fields
    can_delete = False


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ["id", "team", "label", "status", "created", "finished"]
    list_filter = ["status", "source", "team"]
    search_fields = ["label", "notes"]
    readonly_fields = ["uuid", "target_config", "plan_config", "progress", "document", "summary"]
    inlines = [LevelInline]


@admin.register(Level)
class LevelAdmin(admin.ModelAdmin):
    list_display = ["run", "index", "concurrency", "rate", "qps", "latency_p99_ms", "error_rate"]
    raw_id_fields = ["run"]
