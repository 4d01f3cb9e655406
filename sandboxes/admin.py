"""The operator's tool. Every model is here; every change to a sandbox, a team, a membership,
a token or a snapshot version goes through the services (the same code the API and the
dashboard use), so each leaves an audit event naming the operator; nothing edits a status
field or saves one of those rows directly."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponseRedirect
from django.shortcuts import render
from django.urls import path, reverse

from sandboxes.models import (
    ActiveSnapshot,
    ApiToken,
    Environment,
    ImageBuild,
    Membership,
    MemberState,
    PoolMember,
    Preset,
    Sandbox,
    SandboxEvent,
    Snapshot,
    Team,
    TeamSecret,
    WarmPool,
)
from sandboxes.services import backends, lifecycle, network, pools, teams
from sandboxes.services.actors import Actor
from sandboxes.services.errors import ServiceError
from sandboxes.services.presets import preset_id_for
from sandboxes.services.snapshots import (
    activate_snapshot,
    delete_snapshot,
    import_snapshot,
    update_snapshot_label,
)
from sandboxes.services.tokens import revoke_api_token


def _run_service(modeladmin, request, queryset, call, verb: str) -> None:
    """Apply ``call(obj, actor)`` to each selected object; report successes and refusals."""
    actor = Actor.for_user(request.user)
    done = 0
    for obj in queryset:
        try:
            call(obj, actor)
            done += 1
        except ServiceError as exc:
            modeladmin.message_user(request, f"{obj}: {exc.message}", messages.ERROR)
    if done:
        modeladmin.message_user(request, f"{verb} {done} item(s).", messages.SUCCESS)


def _form_error(form: forms.BaseForm, check) -> None:
    """Run a service's validation in a form's clean: a refusal is a form error, not a 500."""
    try:
        check()
    except ServiceError as exc:
        for name, problems in (exc.fields or {}).items():
            if name in form.fields:
                for problem in problems:
                    form.add_error(name, problem)
                return
        form.add_error(None, exc.message)


class ServiceWritesAdmin(admin.ModelAdmin):
    """A model whose admin writes go through a service (``save_model``/``delete_model``).

    The forms call the services' own checks, so what a service would refuse shows on the
    form; a refusal that only the service's locked re-check finds (a concurrent change) is
    rolled back with the whole request and reported as a message, never a 500.
    """

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        form.actor = Actor.for_user(request.user)
        return form

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except ServiceError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def delete_view(self, request, object_id, extra_context=None):
        try:
            return super().delete_view(request, object_id, extra_context)
        except ServiceError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def delete_queryset(self, request, queryset) -> None:
        # "Delete selected": one service call per row, each refusal reported on its own.
        for obj in queryset:
            try:
                self.delete_model(request, obj)
            except ServiceError as exc:
                self.message_user(request, f"{obj}: {exc.message}", messages.ERROR)


class MembershipInline(admin.TabularInline):
    """Read-only here: memberships are added, changed and removed on their own admin page,
    where each write goes through the teams service and is audited."""

    model = Membership
    extra = 0
    can_delete = False
    fields = ["user", "role", "created_at"]
    readonly_fields = fields
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class TeamForm(forms.ModelForm):
    class Meta:
        model = Team
        fields = ["slug", *teams.TEAM_SETTINGS]  # what the teams service lets an operator set

    def clean(self):
        cleaned = super().clean()
        mode = cleaned.get("network_policy")
        if mode:
            _form_error(
                self, lambda: network.parse_policy(mode, cleaned.get("network_allow") or [])
            )
        return cleaned

    def clean_slug(self):
        slug = self.cleaned_data["slug"]
        _form_error(self, lambda: teams.validate_slug(slug))
        return slug


@admin.register(Team)
class TeamAdmin(ServiceWritesAdmin):
    form = TeamForm
    list_display = ["slug", "name", "members", "max_sandboxes", "max_vcpus", "max_memory_mb"]
    search_fields = ["slug", "name"]
    inlines = [MembershipInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(member_count=Count("memberships"))

    def get_readonly_fields(self, request, obj=None):
        # The slug names the team in URLs and in every instance's provider metadata.
        return ["slug"] if obj is not None else []

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # its audit trail refers to it (and PROTECTs it)

    @admin.display(ordering="member_count")
    def members(self, team: Team) -> int:
        return team.member_count

    def save_model(self, request, obj, form, change) -> None:
        actor = Actor.for_user(request.user)
        settings = {name: form.cleaned_data[name] for name in teams.TEAM_SETTINGS}
        if not change:
            created = teams.create_team(slug=obj.slug, name=settings["name"], actor=actor)
            obj.pk = created.pk
        teams.update_team(team=obj, actor=actor, changes=settings)
        obj.refresh_from_db()


class MembershipForm(forms.ModelForm):
    class Meta:
        model = Membership
        fields = ["user", "team", "role"]

    def clean(self):
        cleaned = super().clean()
        team = cleaned.get("team") or getattr(self.instance, "team", None)
        user = cleaned.get("user") or getattr(self.instance, "user", None)
        if team is not None and "role" in cleaned:
            _form_error(
                self, lambda: teams.check_role_change(team=team, user=user, role=cleaned["role"])
            )
        return cleaned


@admin.register(Membership)
class MembershipAdmin(ServiceWritesAdmin):
    form = MembershipForm
    list_display = ["user", "team", "role", "created_at"]
    list_filter = ["role", "team"]
    search_fields = ["user__username", "team__slug"]
    autocomplete_fields = ["user", "team"]

    def get_readonly_fields(self, request, obj=None):
        # Moving a membership to another user or team is a removal and an addition.
        return ["user", "team", "created_at"] if obj is not None else ["created_at"]

    def save_model(self, request, obj, form, change) -> None:
        actor = Actor.for_user(request.user)
        if change:
            saved = teams.change_member_role(membership=obj, role=obj.role, actor=actor)
        else:
            saved = teams.add_member(team=obj.team, user=obj.user, role=obj.role, actor=actor)
        obj.pk = saved.pk

    def delete_model(self, request, obj) -> None:
        teams.remove_member(membership=obj, actor=Actor.for_user(request.user))


class PresetForm(forms.ModelForm):
    class Meta:
        model = Preset
        fields = [
            "vcpus",
            "memory_mb",
            "disk_gb",
            "label",
            "description",
            "providers",
            "enabled",
            "network_policy",
            "network_allow",
        ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Left out: the default policy (none).
        self.fields["network_policy"].required = False

    def clean(self):
        cleaned = super().clean()
        try:
            policy = network.parse_policy(
                cleaned.get("network_policy") or "none", cleaned.get("network_allow") or []
            )
        except ServiceError as exc:
            raise forms.ValidationError(exc.message) from None
        cleaned["network_policy"] = policy.mode
        cleaned["network_allow"] = list(policy.allow)
        if self.instance._state.adding and not self.errors:
            try:
                self.instance.id = preset_id_for(
                    cleaned["vcpus"], cleaned["memory_mb"], cleaned["disk_gb"]
                )
            except ServiceError as exc:
                raise forms.ValidationError(exc.message) from None
            if Preset.objects.filter(pk=self.instance.id).exists():
                raise forms.ValidationError(f"preset {self.instance.id} already exists")
        return cleaned


@admin.register(Preset)
class PresetAdmin(admin.ModelAdmin):
    form = PresetForm
    list_display = ["id", "label", "vcpus", "memory_mb", "disk_gb", "providers", "enabled"]
    # Full clones are a PVE option now: PVE_FULL_CLONE_PRESETS (docs/providers/pve.md).
    list_filter = ["enabled"]
    search_fields = ["id", "label"]

    def get_readonly_fields(self, request, obj=None):
        # The id is the size: once sandboxes use a preset its size cannot change.
        return ["id", "vcpus", "memory_mb", "disk_gb"] if obj is not None else []


class ImportSnapshotForm(forms.Form):
    provider = forms.ChoiceField()
    preset = forms.ModelChoiceField(queryset=Preset.objects.all())
    ref = forms.CharField(
        max_length=255,
        help_text="What the provider calls the image: a PVE template VMID, a Morph snapshot "
        "id, a Docker image, a local layer.",
    )
    label = forms.CharField(max_length=200, required=False)
    team = forms.ModelChoiceField(
        queryset=Team.objects.all(), required=False, help_text="Blank: shared by every team."
    )
    activate = forms.BooleanField(required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["provider"].choices = [(p, p) for p in backends.enabled_provider_names()]


@admin.register(Snapshot)
class SnapshotAdmin(ServiceWritesAdmin):
    list_display = [
        "snapshot_id",
        "status",
        "team",
        "label",
        "size_bytes",
        "created_by",
        "created_at",
    ]
    list_filter = ["provider", "status", "preset", "team"]
    search_fields = ["snapshot_id", "label", "provider_ref"]
    readonly_fields = [
        f.name for f in Snapshot._meta.fields if f.name not in ("label",) and f.name != "id"
    ]
    exclude = ["lease_token", "lease_expires_at"]
    actions = ["activate_shared", "delete_versions"]

    def save_model(self, request, obj, form, change) -> None:
        # The label is the only editable field (every other one is read-only above).
        update_snapshot_label(snapshot=obj, label=obj.label, actor=Actor.for_user(request.user))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # versions are imported (below) or taken from sandboxes

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # use the "delete version" action: it checks what depends on it

    def get_urls(self):
        extra = [
            path(
                "import/",
                self.admin_site.admin_view(self.import_view),
                name="sandboxes_snapshot_import",
            )
        ]
        return extra + super().get_urls()

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "import_url": "import/"}
        return super().changelist_view(request, extra_context)

    def import_view(self, request: HttpRequest):
        form = ImportSnapshotForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                snapshot = import_snapshot(
                    provider=data["provider"],
                    preset_id=data["preset"].pk,
                    ref=data["ref"],
                    label=data["label"],
                    team=data["team"],
                    activate=data["activate"],
                    actor=Actor.for_user(request.user),
                )
            except ServiceError as exc:
                form.add_error(None, exc.message)
            else:
                self.message_user(request, f"Imported {snapshot.snapshot_id}.", messages.SUCCESS)
                return HttpResponseRedirect(reverse("admin:sandboxes_snapshot_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "title": "Import a snapshot",
            "form": form,
            "opts": self.model._meta,
        }
        return render(request, "admin/sandboxes/snapshot/import.html", context)

    @admin.action(description="Activate for every team (shared versions)")
    def activate_shared(self, request, queryset):
        _run_service(
            self,
            request,
            queryset,
            lambda s, actor: activate_snapshot(snapshot=s, actor=actor, team=s.team),
            "Activated",
        )

    @admin.action(description="Delete version (only when nothing uses it)")
    def delete_versions(self, request, queryset):
        _run_service(
            self,
            request,
            queryset,
            lambda s, actor: delete_snapshot(snapshot=s, actor=actor),
            "Deleting",
        )


@admin.register(ActiveSnapshot)
class ActiveSnapshotAdmin(admin.ModelAdmin):
    list_display = ["provider", "preset", "team", "snapshot", "activated_by", "activated_at"]
    list_filter = ["provider", "team"]
    readonly_fields = ["team", "provider", "preset", "snapshot", "activated_by", "activated_at"]

    def has_add_permission(self, request) -> bool:
        return False  # activate from the snapshot versions' action


class SandboxEventInline(admin.TabularInline):
    model = SandboxEvent
    fk_name = "sandbox"
    extra = 0
    can_delete = False
    ordering = ["-created_at", "-id"]
    fields = [
        "created_at",
        "action",
        "outcome",
        "from_status",
        "to_status",
        "actor_label",
        "message",
    ]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Sandbox)
class SandboxAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "team", "status", "provider", "preset", "created_at"]
    list_filter = ["status", "provider", "team", "preset"]
    search_fields = ["id", "name", "provider_ref"]
    list_select_related = ["team", "preset"]
    readonly_fields = [f.name for f in Sandbox._meta.fields]
    inlines = [SandboxEventInline]
    actions = ["stop", "pause", "resume", "delete"]

    def has_add_permission(self, request) -> bool:
        return False  # sandboxes start from the dashboard or the API

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # the "delete" action deletes on the provider, then marks the row

    def _lifecycle(self, request, queryset, operation: str) -> None:
        call = getattr(lifecycle, f"{operation}_sandbox")
        _run_service(
            self,
            request,
            queryset.select_related("team"),
            lambda s, actor: call(sandbox=s, actor=actor),
            f"Asked to {operation}",
        )

    @admin.action(description="Stop selected sandboxes")
    def stop(self, request, queryset):
        self._lifecycle(request, queryset, "stop")

    @admin.action(description="Pause selected sandboxes")
    def pause(self, request, queryset):
        self._lifecycle(request, queryset, "pause")

    @admin.action(description="Resume selected sandboxes")
    def resume(self, request, queryset):
        self._lifecycle(request, queryset, "resume")

    @admin.action(description="Delete selected sandboxes (on the provider too)")
    def delete(self, request, queryset):
        self._lifecycle(request, queryset, "delete")


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows an operator inspects here but changes only where their service is (the audit log,
    or a team's own pages and API, which check the team and write the audit event)."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(SandboxEvent)
class SandboxEventAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "team",
        "sandbox",
        "action",
        "outcome",
        "from_status",
        "to_status",
        "actor_label",
    ]
    list_filter = ["action", "outcome", "actor_kind", "team"]
    search_fields = ["actor_label", "sandbox__id", "message"]
    list_select_related = ["team", "sandbox"]
    date_hierarchy = "created_at"


@admin.register(Environment)
class EnvironmentAdmin(ReadOnlyAdmin):
    list_display = ["name", "team", "snapshot_id", "preset", "provider", "repo", "updated_at"]
    list_filter = ["team", "provider"]
    search_fields = ["name", "repo"]
    list_select_related = ["team", "preset"]


@admin.register(TeamSecret)
class TeamSecretAdmin(ReadOnlyAdmin):
    """Names only: a secret's value is never read back, not even by an operator."""

    list_display = ["name", "team", "updated_at", "updated_by"]
    list_filter = ["team"]
    search_fields = ["name"]
    exclude = ["ciphertext"]
    list_select_related = ["team"]


@admin.register(ImageBuild)
class ImageBuildAdmin(ReadOnlyAdmin):
    list_display = ["pk", "kind", "provider", "status", "progress", "team", "created_at"]
    list_filter = ["status", "kind", "provider"]
    list_select_related = ["team"]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = [
        "prefix",
        "user",
        "team",
        "name",
        "can_write",
        "expires_at",
        "last_used_at",
        "revoked_at",
    ]
    list_filter = ["can_write", "team"]
    search_fields = ["prefix", "name", "user__username"]
    exclude = ["digest"]  # never shown, even hashed
    readonly_fields = [
        "prefix",
        "user",
        "team",
        "name",
        "can_write",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    ]
    actions = ["revoke"]

    def has_add_permission(self, request) -> bool:
        return False  # made by their owner (dashboard, API) or `manage.py create_api_token`

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # nothing about a token is edited; it is revoked (the action below)

    def has_delete_permission(self, request, obj=None) -> bool:
        # Revoke instead: the row stays for the audit trail, which names it as an actor.
        return False

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request, queryset):
        _run_service(
            self,
            request,
            queryset.select_related("team", "user"),
            lambda t, actor: revoke_api_token(token=t, actor=actor),
            "Revoked",
        )


class PoolMemberInline(admin.TabularInline):
    """A pool's members, read-only: the worker makes and removes them."""

    model = PoolMember
    fields = ["id", "state", "provider_ref", "snapshot", "created_at", "ready_at", "last_error"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(WarmPool)
class WarmPoolAdmin(ServiceWritesAdmin):
    """Warm pools (docs/pools.md), shared ones included: writes go through services/pools."""

    list_display = [
        "snapshot",
        "team",
        "target_size",
        "maximum",
        "enabled",
        "ready_members",
        "hits",
        "misses",
        "short_since",
    ]
    list_filter = ["provider", "enabled", "team"]
    inlines = [PoolMemberInline]
    fields = ["snapshot", "team", "target_size", "maximum", "max_age_seconds", "enabled"]

    def get_readonly_fields(self, request, obj=None):
        # A pool follows activations; another snapshot or team is another pool.
        return ["snapshot", "team"] if obj is not None else []

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .select_related("snapshot", "team")
            .annotate(ready=Count("members", filter=Q(members__state=MemberState.READY)))
        )

    @admin.display(description="ready", ordering="ready")
    def ready_members(self, obj) -> int:
        return obj.ready

    def save_model(self, request, obj, form, change) -> None:
        actor = Actor.for_user(request.user)
        values = {
            "target_size": obj.target_size,
            "maximum": obj.maximum,
            "max_age_seconds": obj.max_age_seconds,
            "enabled": obj.enabled,
        }
        if change:
            pools.update_pool(actor=actor, pool=WarmPool.objects.get(pk=obj.pk), **values)
        else:
            made = pools.create_pool(actor=actor, team=obj.team, snapshot=obj.snapshot, **values)
            obj.pk = made.pk

    def delete_model(self, request, obj) -> None:
        pools.delete_pool(actor=Actor.for_user(request.user), pool=obj)
