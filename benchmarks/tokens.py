"""Where token counts come from: the model's own tokenizer, the server's usage, or an estimate.

A target may name a tokenizer: a Hugging Face model id, or a `tokenizer.json` file. With it the
engine counts tokens itself with the `tokenizers` library and cuts unique texts to the planned count
(inputs.py). A model id is fetched once into `<data folder>/tokenizers` (the data folder is
$EMBPERF_VAR_DIR, shared by the portal's workers; a fetched tokenizer is read from there without any
contact), through the outbound policy like every other contact (benchmarks/outbound.py: the hub's
host, $HF_ENDPOINT or huggingface.co, and each host it redirects to must be allowed), capped in size,
and a host that cannot reach the hub gets a plain message within seconds, never a hang.

Which files may be read is a `TokenizerPolicy`: the CLI, run by its own user, reads any path that
user can (a file, or a folder holding tokenizer.json); the portal's workers read only a file inside
the folder an operator names (EMBPERF_TOKENIZER_DIR; none by default), given as a path relative to
it, never absolute, never through `..` or a symlink out of it. Every file is capped in size
(MAX_TOKENIZER_BYTES), and a file that cannot be used is "not a usable tokenizer": the parser's
words, the file's contents and whether some other path exists are never repeated.

The server's usage is cross-checked against the texts it was given: a figure that equals the
character count, equals the word count, or is not between 2 and 8 characters per token (English
prose) cannot be a token count; it is named as such and not used for the figures.
"""
import os
import re
from dataclasses import dataclass
from pathlib import Path

from benchmarks.errors import ConfigError

TOKENIZER = "tokenizer"
USAGE = "server usage"
ESTIMATE = "estimate"

# Characters per token that English prose can have: word-piece and BPE vocabularies give about 4;
# below 2 the server counts something finer than tokens, above 8 something coarser.
MIN_CHARS_PER_TOKEN = 2.0
MAX_CHARS_PER_TOKEN = 8.0
# A tokenizer and a server that count the same text this far apart are probably not the same model.
RATIO_WARN_LOW, RATIO_WARN_HIGH = 0.8, 1.25

# How far from the character or word count usage may be and still be that count (special tokens).
COUNT_SLACK = 2

HUB_TIMEOUT_S = 10.0  # connect and read timeout of each call to the hub
MAX_TOKENIZER_BYTES = 64 * 1024 * 1024  # the largest tokenizer.json of common models is about 35 MB

NOT_USABLE = "not a usable tokenizer"
FOLDER_SETTING = "EMBPERF_TOKENIZER_DIR"
# A Hugging Face model id: "name" or "org/name", letters, digits, '.', '_' and '-'.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")


@dataclass(frozen=True)
class TokenizerPolicy:
    """Which tokenizers a sweep may read. With `local_paths`, any file its user can read (the CLI);
    without, a Hugging Face model id, or a file inside `folder` (None: no files at all)."""

    local_paths: bool = True
    folder: Path | None = None
    max_bytes: int = MAX_TOKENIZER_BYTES


def is_hub_id(spec: str) -> bool:
    """True for what names a model on the hub rather than a file ("org/name", no ".json", no "..")."""
    return bool(_HUB_ID.fullmatch(spec)) and ".." not in spec and not spec.endswith(".json")


def tokenizer_spec_error(spec: str, policy: TokenizerPolicy) -> str | None:
    """Why `policy` refuses a target's tokenizer field, in words for the person who typed it; None when
    it may be used (or is empty). Checked when a target is saved and again before a sweep reads it."""
    spec = (spec or "").strip()
    if not spec or policy.local_paths or is_hub_id(spec):
        return None
    example = "a Hugging Face model id such as BAAI/bge-large-en-v1.5"
    if policy.folder is None:
        return (f"Give {example}: tokenizer files are off on this installation (an operator can name a folder "
                f"of them, {FOLDER_SETTING}).")
    if not spec.endswith(".json"):
        return f"Give {example}, or a .json tokenizer file in the tokenizer folder, such as bge/tokenizer.json."
    if spec.startswith(("/", "~", "\\")) or re.match(r"[A-Za-z]:", spec):
        return ("Give the tokenizer file as a path inside the tokenizer folder, such as bge/tokenizer.json, "
                "not an absolute path.")
    if ".." in re.split(r"[/\\]", spec):
        return "A tokenizer path may not use '..': give a path inside the tokenizer folder, such as bge/tokenizer.json."
    path, inside = _in_folder(spec, policy.folder)
    if path.exists() and not inside:
        return "That tokenizer file points outside the tokenizer folder; only files inside it can be used."
    if inside and path.is_file() and path.stat().st_size > policy.max_bytes:
        return f"That tokenizer file is larger than {policy.max_bytes // 2**20} MiB, the most a tokenizer may take."
    return None


def _in_folder(spec: str, folder: Path) -> tuple[Path, bool]:
    """The real path a folder-relative spec leads to (symlinks followed), and whether it is inside the folder."""
    root = Path(os.path.realpath(folder))
    path = Path(os.path.realpath(root / spec))
    return path, path != root and os.path.commonpath([root, path]) == str(root)


def default_var_dir() -> Path:
    """The data folder: $EMBPERF_VAR_DIR, else var/ beside the code (as the portal's settings do)."""
    return Path(os.environ.get("EMBPERF_VAR_DIR") or Path(__file__).resolve().parent.parent / "var")


def resolve_tokenizer(spec: str, *, var_dir: str | Path | None = None, timeout_s: float = HUB_TIMEOUT_S,
                      policy: TokenizerPolicy | None = None, outbound=None) -> str:
    """The local path of the `tokenizer.json` a target names (a file `policy` allows, or a model id
    fetched once through the `outbound` policy, by default $EMBPERF_ALLOWED_TARGETS'); by default any
    local path (the CLI's policy).

    Raises ConfigError with a message a person can act on (unusable file, unknown model, no network)."""
    policy = policy or TokenizerPolicy()
    spec = (spec or "").strip()
    if not spec:
        raise ConfigError("no tokenizer named")
    if not policy.local_paths:
        return _resolve_in_folder(spec, policy, var_dir, timeout_s, outbound)
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    if path.is_file():
        return str(path)
    if spec.startswith(("/", ".", "~")) or spec.endswith(".json") or spec.count("/") > 1:
        raise ConfigError(f"tokenizer file {path} does not exist (give a tokenizer.json, a folder holding one, "
                          "or a Hugging Face model id such as BAAI/bge-large-en-v1.5)")
    return _fetch_from_hub(spec, Path(var_dir) if var_dir else default_var_dir(), timeout_s, outbound,
                           policy.max_bytes)


def _resolve_in_folder(spec: str, policy: TokenizerPolicy, var_dir, timeout_s: float, outbound=None) -> str:
    # The same words for a file that is missing, unreadable, outside the folder or too large: nothing
    # tells a member whether some path exists on the worker.
    refused = tokenizer_spec_error(spec, policy)
    if refused is None and is_hub_id(spec):
        return _fetch_from_hub(spec, Path(var_dir) if var_dir else default_var_dir(), timeout_s, outbound,
                               policy.max_bytes)
    if refused is None and policy.folder is not None:
        path, inside = _in_folder(spec, policy.folder)
        if inside and path.is_file():
            return str(path)
    raise ConfigError(f"the target's tokenizer {spec[:100]!r} is {NOT_USABLE}: give a Hugging Face model id, "
                      f"or a tokenizer file the workers hold in their tokenizer folder ({FOLDER_SETTING})")


HUB = "https://huggingface.co"
MAX_HUB_REDIRECTS = 3  # the hub sends large files on to its CDN, and renamed models to their new name


def _cache_path(var_dir: Path, model_id: str) -> Path:
    return var_dir / "tokenizers" / model_id.replace("/", "--") / "tokenizer.json"


def _fetch_from_hub(model_id: str, var_dir: Path, timeout_s: float, outbound=None,
                    max_bytes: int = MAX_TOKENIZER_BYTES) -> str:
    """The tokenizer.json of a hub model: from the data folder when fetched before (no contact at all),
    else downloaded once, through the outbound policy like every other contact (the hub's host and
    every host it redirects to must be allowed), at most `max_bytes`, then kept in the data folder."""
    cached = _cache_path(var_dir, model_id)
    if cached.is_file():
        return str(cached)
    earlier = _earlier_hub_cache(model_id, var_dir)
    if earlier is not None:
        return earlier
    from benchmarks.outbound import OutboundPolicy

    policy = outbound if outbound is not None else OutboundPolicy.from_environment()
    where = (os.environ.get("HF_ENDPOINT") or HUB).rstrip("/")
    fallback = "copy the model's tokenizer.json to the workers' tokenizer folder and give its path instead"
    url = f"{where}/{model_id}/resolve/main/tokenizer.json"
    from benchmarks.answers import run_blocking

    data = run_blocking(lambda: _download(url, model_id, where, policy, timeout_s, max_bytes, fallback))
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_name(f".tokenizer.json.{os.getpid()}")
    partial.write_bytes(data)
    os.replace(partial, cached)  # another worker sharing the folder sees the whole file or none
    return str(cached)


def _earlier_hub_cache(model_id: str, var_dir: Path) -> str | None:
    """A tokenizer fetched by an earlier version into huggingface_hub's cache layout, found without
    contact (the hub client itself may call its endpoint even when asked for a local file)."""
    repo = var_dir / "tokenizers" / ("models--" + model_id.replace("/", "--"))
    try:
        commit = (repo / "refs" / "main").read_text().strip()
    except OSError:
        return None
    path = repo / "snapshots" / commit / "tokenizer.json"
    return str(path) if commit and "/" not in commit and path.is_file() else None


async def _download(url: str, model_id: str, where: str, policy, timeout_s: float, max_bytes: int,
                    fallback: str) -> bytes:
    import aiohttp
    from yarl import URL

    from benchmarks.answers import IDENTITY, AnswerTooLarge, failure, mib, read_body
    from benchmarks.outbound import OutboundRefused
    from benchmarks.outbound import connector as outbound_connector

    hub_host = URL(where).host
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    cannot = f"tokenizer: cannot fetch {model_id} from {where}"
    try:
        policy.check_url(url)
    except (OutboundRefused, ValueError) as exc:
        raise ConfigError(f"{cannot}: {exc}; allow the hub's host in EMBPERF_ALLOWED_TARGETS "
                          f"(docs/security.md), or {fallback}") from None
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s, connect=timeout_s),
                                    connector=outbound_connector(policy), auto_decompress=False)
    async with session:
        for _ in range(MAX_HUB_REDIRECTS + 1):
            # The token goes to the hub itself only, never to where it redirects.
            headers = dict(IDENTITY)
            if token and URL(url).host == hub_host:
                headers["Authorization"] = f"Bearer {token}"
            try:
                async with session.get(url, headers=headers, allow_redirects=False) as resp:
                    if resp.status in (301, 302, 303, 307, 308) and resp.headers.get("Location"):
                        url = str(URL(url).join(URL(resp.headers["Location"])))
                        continue
                    if resp.status in (401, 403):
                        raise ConfigError(f"tokenizer: model {model_id} is gated or private on {where} (accept "
                                          f"its licence and set HF_TOKEN); or {fallback}")
                    if resp.status == 404:
                        raise ConfigError(f"tokenizer: model {model_id} was not found, or has no tokenizer.json, "
                                          f"on {where} (a private model needs HF_TOKEN); or {fallback}")
                    if resp.status != 200:
                        raise ConfigError(f"{cannot} (HTTP {resp.status}); {fallback}")
                    return await read_body(resp, max_bytes)
            except AnswerTooLarge:
                raise ConfigError(f"tokenizer: the tokenizer.json of {model_id} is {NOT_USABLE}: it is larger "
                                  f"than {mib(max_bytes)}") from None
            except OutboundRefused as exc:
                raise ConfigError(f"{cannot}: {exc}; allow the hub's hosts in EMBPERF_ALLOWED_TARGETS "
                                  f"(docs/security.md), or {fallback}") from None
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                _, message = failure(exc, timeout_s)
                raise ConfigError(f"{cannot} (is this host offline?): {message}; {fallback}") from None
    raise ConfigError(f"{cannot}: more than {MAX_HUB_REDIRECTS} redirects; {fallback}")


def load_tokenizer(path: str, max_bytes: int = MAX_TOKENIZER_BYTES):
    """A `tokenizers.Tokenizer` from a tokenizer.json of at most `max_bytes`; ConfigError "not a usable
    tokenizer" otherwise (never the parser's words, which may quote the file)."""
    from tokenizers import Tokenizer

    name = Path(path).name
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError:
        raise ConfigError(f"the tokenizer {name} is {NOT_USABLE} (it cannot be read)") from None
    if len(raw) > max_bytes:
        raise ConfigError(f"the tokenizer {name} is {NOT_USABLE}: it is larger than {max_bytes // 2**20} MiB")
    try:
        tokenizer = Tokenizer.from_str(raw.decode("utf-8"))
    except Exception:  # the Rust side raises plain Exceptions whose text quotes the file
        raise ConfigError(f"the tokenizer {name} is {NOT_USABLE}: it is not a tokenizer.json the tokenizers "
                          "library can read") from None
    # Count every token: a tokenizer saved with truncation or padding would hide or invent some.
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def count(tokenizer, text: str) -> int:
    """Tokens of one text as the model sees it, special tokens ([CLS], [SEP], ...) included."""
    return len(tokenizer.encode(text, add_special_tokens=True).ids)


@dataclass
class UsageCheck:
    """What the server's usage figures are, judged from texts whose length is known."""

    kind: str            # "tokens", "characters", "words", "implausible", "none"
    note: str | None     # plain words when the usage cannot be used
    chars_per_token: float | None

    @property
    def usable(self) -> bool:
        return self.kind == "tokens"


def check_usage(samples: list[tuple[str, int | None]]) -> UsageCheck:
    """Judge the server's usage from (text sent alone, usage reported) samples."""
    reported = [(text, usage) for text, usage in samples if usage is not None]
    if not reported:
        return UsageCheck("none", "the server reports no token usage", None)
    chars = sum(len(text) for text, _ in reported)
    used = sum(usage for _, usage in reported)
    ratio = round(chars / used, 3) if used else None
    # Within a couple: a server may add its special tokens to a count of characters or words.
    if all(abs(usage - len(text)) <= COUNT_SLACK for text, usage in reported):
        return UsageCheck("characters", "the server's usage counts characters, not tokens", ratio)
    if all(abs(usage - len(text.split())) <= COUNT_SLACK for text, usage in reported):
        return UsageCheck("words", "the server's usage counts words, not tokens", ratio)
    if ratio is None or not MIN_CHARS_PER_TOKEN <= ratio <= MAX_CHARS_PER_TOKEN:
        shown = "0 tokens" if ratio is None else f"{ratio:g} characters per token"
        return UsageCheck("implausible", f"the server's usage ({used} for {chars} characters, {shown}) cannot be "
                          f"a token count for English prose (expected {MIN_CHARS_PER_TOKEN:g} to "
                          f"{MAX_CHARS_PER_TOKEN:g} characters per token)", ratio)
    return UsageCheck("tokens", None, ratio)


def ratio_note(ratio: float | None) -> str | None:
    """A note when the server and the tokenizer count the same texts far apart."""
    if ratio is None or RATIO_WARN_LOW <= ratio <= RATIO_WARN_HIGH:
        return None
    return (f"the server counts {ratio:.2f} tokens for each token of the tokenizer: is the tokenizer the "
            "served model's own?")
