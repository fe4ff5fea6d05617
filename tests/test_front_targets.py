"""Target pages: list, create (with bad input), edit (write-only API key), delete, team scoping."""
import pytest
from django.urls import reverse

from portal.sweeps.models import Target

pytestmark = pytest.mark.django_db

GOOD = {
    "name": "sglang-h100",
    "flavor": "openai",
    "base_urls": "http://127.0.0.1:30000/v1\nhttp://127.0.0.1:30001/v1/",
    "model_name": "Qwen/Qwen3-Embedding-4B",
    "api_key": "",
    "engine": "sglang",
    "engine_version": "0.5.2",
    "launch_config": "--max-running-requests 128\n--dtype=bfloat16\n--enable-metrics",
    "gpu_source": "none",
    "gpu_indices": "",
    "metrics_urls": "",
    "queue": "sweeps",
}


def post_target(client, user, data, url=None):
    client.force_login(user)
    return client.post(url or reverse("target-create"), data)


def test_list_shows_own_targets_only(client, owner, target, outsider):
    from portal.sweeps.models import Target

    Target.objects.create(team=outsider.memberships.get().team, name="charlies-secret", base_urls=["http://x"],
                          model_name="m")
    client.force_login(owner)
    page = client.get(reverse("target-list")).content.decode()
    assert "sim" in page and "charlies-secret" not in page


def test_anonymous_is_sent_to_login(client, target):
    response = client.get(reverse("target-list"))
    assert response.status_code == 302 and reverse("login") in response["Location"]


def test_create_target(client, owner, team):
    response = post_target(client, owner, {**GOOD, "team": team.pk, "api_key": "sk-123"})
    target = Target.objects.get(name="sglang-h100")
    assert response.status_code == 302 and response["Location"] == target.get_absolute_url()
    assert target.team == team
    assert target.base_urls == ["http://127.0.0.1:30000/v1", "http://127.0.0.1:30001/v1"]
    assert target.launch_config == {"--max-running-requests": "128", "--dtype": "bfloat16", "--enable-metrics": ""}
    assert target.api_key == "sk-123"


def test_create_picks_the_first_team_when_user_has_one(client, owner, team):
    post_target(client, owner, GOOD)
    assert Target.objects.get(name="sglang-h100").team == team


def test_user_with_two_teams_chooses(client, owner, other_team):
    from portal.accounts.models import Membership

    Membership.objects.create(team=other_team, user=owner, role="member")
    client.force_login(owner)
    page = client.get(reverse("target-create")).content.decode()
    assert other_team.name.replace("'", "&#x27;") in page
    post_target(client, owner, {**GOOD, "team": other_team.pk})
    assert Target.objects.get(name="sglang-h100").team == other_team


def test_cannot_create_in_a_team_one_is_not_in(client, owner, other_team):
    response = post_target(client, owner, {**GOOD, "team": other_team.pk})
    assert response.status_code == 200
    assert not Target.objects.filter(name="sglang-h100").exists()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("base_urls", "127.0.0.1:30000/v1", "no http:// or https:// scheme"),
        ("base_urls", "ftp://host/v1", "must start with http:// or https://"),
        ("base_urls", "", "Enter at least one URL"),
        ("base_urls", "http://a:1/v1\nhttp://a:1/v1/", "listed twice"),
        ("base_urls", "http://host:port/v1", "port that is not a number"),
        ("launch_config", "=128", "has a value but no key"),
        ("launch_config", "--a 1\n--a 2", "already set above"),
        ("launch_config", "<b> 1", "is not a key"),
        ("gpu_indices", "0,x", "whole numbers"),
        ("queue", "my queue", "Queue names use"),
        ("metrics_urls", "localhost:9400/metrics", "no http:// or https:// scheme"),
        ("name", "", "This field is required"),
    ],
)
def test_bad_input_gives_message_and_saves_nothing(client, owner, team, field, value, message):
    before = Target.objects.count()
    response = post_target(client, owner, {**GOOD, field: value})
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert field in errors and message in " ".join(errors[field])
    assert message.replace("'", "&#x27;") in response.content.decode()
    assert Target.objects.count() == before


def test_prometheus_gpu_source_needs_a_metrics_url(client, owner, team):
    response = post_target(client, owner, {**GOOD, "gpu_source": "prometheus"})
    assert "metrics_urls" in response.context["form"].errors
    assert not Target.objects.filter(name="sglang-h100").exists()


def test_api_key_is_never_rendered_and_blank_keeps_it(client, owner, target):
    target.api_key = "sk-very-secret"
    target.save()
    client.force_login(owner)
    for url in (reverse("target-edit", args=[target.pk]), target.get_absolute_url()):
        assert "sk-very-secret" not in client.get(url).content.decode()
    # Same servers: blank keeps the key (another server needs it again, tests/test_outbound_attacks.py).
    data = {**GOOD, "name": "renamed", "api_key": "", "base_urls": "\n".join(target.base_urls)}
    client.post(reverse("target-edit", args=[target.pk]), data)
    target.refresh_from_db()
    assert target.name == "renamed" and target.api_key == "sk-very-secret"
    client.post(reverse("target-edit", args=[target.pk]), {**data, "api_key": "sk-new"})
    target.refresh_from_db()
    assert target.api_key == "sk-new"
    client.post(reverse("target-edit", args=[target.pk]), {**data, "clear_api_key": "on"})
    target.refresh_from_db()
    assert target.api_key == ""


def test_edit_does_not_move_target_to_another_team(client, owner, target, other_team):
    post_target(client, owner, {**GOOD, "team": other_team.pk}, url=reverse("target-edit", args=[target.pk]))
    target.refresh_from_db()
    assert target.team.name == "Alice's team"


def test_delete_keeps_runs(client, owner, target, plan):
    from portal.sweeps.services import create_run

    run = create_run(target=target, plan=plan)
    client.force_login(owner)
    assert client.get(reverse("target-delete", args=[target.pk])).status_code == 200
    response = client.post(reverse("target-delete", args=[target.pk]))
    assert response.status_code == 302
    assert not Target.objects.filter(pk=target.pk).exists()
    run.refresh_from_db()
    assert run.target is None and run.target_config["name"] == "sim"


@pytest.mark.parametrize("name", ["target-detail", "target-edit", "target-delete", "target-probe"])
def test_outsider_gets_404(client, outsider, target, name):
    client.force_login(outsider)
    assert client.get(reverse(name, args=[target.pk])).status_code == 404
    assert client.post(reverse(name, args=[target.pk])).status_code == 404
    assert Target.objects.filter(pk=target.pk).exists()


def test_viewer_can_look_but_not_change(client, target, team):
    from django.contrib.auth.models import User

    from portal.accounts.models import Membership

    viewer = User.objects.create_user("vera", password="password")
    Membership.objects.create(team=team, user=viewer, role="viewer")
    client.force_login(viewer)
    assert client.get(target.get_absolute_url()).status_code == 200
    assert client.post(reverse("target-edit", args=[target.pk]), GOOD).status_code == 403
    assert client.post(reverse("target-delete", args=[target.pk])).status_code == 403
    page = client.get(reverse("target-create")).content.decode()
    assert "You cannot create targets" in page
