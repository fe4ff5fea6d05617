"""A target's tokenizer on the portal: a Hugging Face model id, or a file inside the operator's folder
(EMBPERF_TOKENIZER_DIR, off by default). Anything else is refused when the target is saved, by the
page and the API with the same words; reading one never repeats the parser, the path's existence
or the file's contents. The CLI, run by its own user, keeps reading local paths."""
import os

import pytest
from django.urls import reverse

from benchmarks.errors import ConfigError
from benchmarks.tokens import TokenizerPolicy, load_tokenizer, resolve_tokenizer, tokenizer_spec_error
from portal.sweeps.models import Target
from tests.api_support import token_client
from tests.test_front_targets import GOOD, post_target

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fresh_throttles")]

OFF = ("Give a Hugging Face model id such as BAAI/bge-large-en-v1.5: tokenizer files are off on this "
       "installation (an operator can name a folder of them, EMBPERF_TOKENIZER_DIR).")
ABSOLUTE = ("Give the tokenizer file as a path inside the tokenizer folder, such as bge/tokenizer.json, "
            "not an absolute path.")
DOTDOT = "A tokenizer path may not use '..': give a path inside the tokenizer folder, such as bge/tokenizer.json."
OUTSIDE = "That tokenizer file points outside the tokenizer folder; only files inside it can be used."


@pytest.fixture
def folder(tmp_path, settings):
    allowed = tmp_path / "tokenizers"
    (allowed / "bge").mkdir(parents=True)
    settings.EMBPERF_TOKENIZER_DIR = str(allowed)
    return allowed


def saved_with(client, owner, tokenizer):
    """The page's and the API's errors for a target naming this tokenizer ({} when it saved)."""
    page = post_target(client, owner, {**GOOD, "name": "page", "tokenizer": tokenizer})
    page_errors = {} if page.status_code == 302 else dict(page.context["form"].errors)
    answer = token_client(owner).post("/api/v1/targets/", {
        "name": "api", "base_urls": ["http://127.0.0.1:30000/v1"], "model_name": "m", "tokenizer": tokenizer},
        format="json")
    api_errors = {} if answer.status_code == 201 else answer.json()
    return page_errors.get("tokenizer"), api_errors.get("tokenizer")


@pytest.mark.parametrize("spec", ["/etc/passwd", "~root/tokenizer.json", "../secret/tokenizer.json",
                                  "/nonexistent/x.json", "bge/tokenizer.json"])
def test_without_a_folder_only_model_ids_are_accepted(client, owner, team, spec):
    assert saved_with(client, owner, spec) == ([OFF], [OFF])
    assert not Target.objects.exists()


def test_a_model_id_is_accepted(client, owner, team):
    assert saved_with(client, owner, "BAAI/bge-large-en-v1.5") == (None, None)
    assert set(Target.objects.values_list("tokenizer", flat=True)) == {"BAAI/bge-large-en-v1.5"}


@pytest.mark.parametrize(("spec", "message"), [
    ("/etc/passwd.json", ABSOLUTE),
    ("~root/tokenizer.json", ABSOLUTE),
    ("bge/../../secret.json", DOTDOT),
    ("../tokenizer.json", DOTDOT),
])
def test_with_a_folder_paths_out_of_it_are_refused(client, owner, team, folder, spec, message):
    assert saved_with(client, owner, spec) == ([message], [message])
    assert not Target.objects.exists()


def test_a_symlink_out_of_the_folder_is_refused(client, owner, team, folder, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text('"TOPSECRET-abc123"')
    os.symlink(secret, folder / "bge" / "tokenizer.json")
    assert saved_with(client, owner, "bge/tokenizer.json") == ([OUTSIDE], [OUTSIDE])


def test_a_file_over_the_size_cap_is_refused(client, owner, team, folder, settings):
    settings.EMBPERF_MAX_TOKENIZER_MIB = 1
    (folder / "bge" / "tokenizer.json").write_bytes(b" " * (2 * 2**20))
    message = "That tokenizer file is larger than 1 MiB, the most a tokenizer may take."
    assert saved_with(client, owner, "bge/tokenizer.json") == ([message], [message])


def test_a_file_in_the_folder_is_accepted(client, owner, team, folder):
    (folder / "bge" / "tokenizer.json").write_text("{}")
    assert saved_with(client, owner, "bge/tokenizer.json") == (None, None)


# ---- reading one --------------------------------------------------------------------------------------

def strict(folder=None) -> TokenizerPolicy:
    return TokenizerPolicy(local_paths=False, folder=folder)


def test_every_unusable_path_reads_the_same_on_a_worker(tmp_path):
    (tmp_path / "exists.json").write_text('"TOPSECRET-abc123"')
    messages = set()
    for spec in ["/nonexistent/x.json", str(tmp_path / "exists.json"), "/etc/hostname"]:
        with pytest.raises(ConfigError) as info:
            resolve_tokenizer(spec, policy=strict(tmp_path))
        messages.add(str(info.value).replace(repr(spec[:100]), "SPEC"))
    assert messages == {"the target's tokenizer SPEC is not a usable tokenizer: give a Hugging Face model id, or a "
                        "tokenizer file the workers hold in their tokenizer folder (EMBPERF_TOKENIZER_DIR)"}


def test_a_file_that_is_not_a_tokenizer_is_never_quoted(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text('"TOPSECRET-abc123"')
    with pytest.raises(ConfigError) as info:
        load_tokenizer(str(path))
    assert str(info.value) == ("the tokenizer tokenizer.json is not a usable tokenizer: it is not a tokenizer.json "
                               "the tokenizers library can read")


def test_a_file_past_the_cap_is_not_read_whole(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_bytes(b" " * (3 * 2**20))
    with pytest.raises(ConfigError, match="not a usable tokenizer: it is larger than 1 MiB"):
        load_tokenizer(str(path), max_bytes=2**20)


def test_the_cli_keeps_local_paths(tmp_path):
    path = tmp_path / "anywhere" / "tokenizer.json"
    path.parent.mkdir()
    path.write_text("{}")
    assert tokenizer_spec_error(str(path), TokenizerPolicy()) is None
    assert resolve_tokenizer(str(path.parent)) == str(path)


def test_the_target_page_says_what_may_be_given(client, owner, team):
    client.force_login(owner)
    page = client.get(reverse("target-create")).content.decode()
    assert "tokenizer folder, such as bge/tokenizer.json" in page
