"""The tokenizer rule for the portal: a target may name a Hugging Face model id, or a file inside the
folder the operator names (EMBPERF_TOKENIZER_DIR; none by default, then only model ids). Checked when
a target is saved (portal.sweeps.rules.target_errors, so the page and the API refuse with the same
words) and again by the worker before it reads one (benchmarks.tokens.resolve_tokenizer with this
policy)."""
from pathlib import Path

from django.conf import settings

from benchmarks.tokens import TokenizerPolicy, tokenizer_spec_error


def tokenizer_policy() -> TokenizerPolicy:
    """What the portal's workers may read as a tokenizer: model ids, and files in the operator's folder."""
    folder = (settings.EMBPERF_TOKENIZER_DIR or "").strip()
    return TokenizerPolicy(local_paths=False, folder=Path(folder) if folder else None,
                           max_bytes=settings.EMBPERF_MAX_TOKENIZER_MIB * 2**20)


def tokenizer_error(spec: str) -> str | None:
    """Why a target may not name this tokenizer, or None."""
    return tokenizer_spec_error(spec, tokenizer_policy())
