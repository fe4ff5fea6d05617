"""Input texts: unique per request by default, calibrated to the server's own token counts.

Unique texts start with a run salt, the process number and a counter, followed by a window of
ordinary English words at a random position of a long word stream, cut at a word boundary after
the calibrated number of characters. The distinct start defeats prefix, radix and response
caches; the word window keeps the text realistic for a tokenizer; cutting by characters (not by
words) keeps the token count of every text close to the target; and a text costs one slice.
Repeat mode (one identical text) exists only as a cache study.

With the model's own tokenizer (benchmarks/tokens.py) the word stream is tokenized once, and each
text takes a window of exactly as many of its tokens as the plan asks for, less the prefix's and the
special tokens: a window starts at a word, and words tokenize the same inside the stream and on
their own, so the text has the planned count (within one token) without encoding it again.

A length distribution (`Lengths`) gives each unique text a token count of its own, drawn from its
own seeded stream: with a tokenizer the window is that many tokens; without one the calibrated
characters per text are scaled by the count over the distribution's median (the count calibration
aimed at). A fixed length draws nothing, so its texts stay what they were.
"""
import bisect
import math
import random
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from benchmarks.errors import ConfigError

MODES = ("unique", "corpus", "repeat")
LENGTHS = ("fixed", "uniform", "lognormal")
TOKENS_MOST = 32_768  # the longest text a plan may ask for (the plan's `tokens` bound), and the clip of a draw
LOGNORMAL_Z_P999 = 3.0902  # the standard normal's 99.9th percentile, where a log-normal length's longest text is put


@dataclass(frozen=True)
class Lengths:
    """How many tokens each unique text has: `tokens` for every text (fixed), a whole number drawn
    uniformly from [low, high] (uniform), or round(tokens * exp(sigma * N(0, 1))) clipped to
    [1, TOKENS_MOST], so that `tokens` is the median (lognormal)."""

    kind: str = "fixed"
    tokens: int = 512
    low: int | None = None
    high: int | None = None
    sigma: float | None = None

    @classmethod
    def from_plan(cls, plan: Mapping) -> "Lengths":
        """The length of a checked plan (benchmarks.plan fills in a distribution's unset fields)."""
        return cls(plan.get("length") or "fixed", int(plan.get("tokens") or 1), plan.get("tokens_min"),
                   plan.get("tokens_max"), plan.get("tokens_sigma"))

    @property
    def fixed(self) -> bool:
        return self.kind == "fixed"

    @property
    def median(self) -> int:
        """The count the texts centre on, which calibration aims at: `tokens`, or the middle of a
        uniform range."""
        if self.kind == "uniform" and self.low and self.high:
            return round((int(self.low) + int(self.high)) / 2)
        return self.tokens

    @property
    def longest(self) -> int:
        """The longest text, for memory and request-size estimates: `tokens`, a uniform range's top, or a
        log-normal length's 99.9th percentile (one text in a thousand is longer, up to the clip; every
        request in flight at once at that length is already far beyond a real load)."""
        if self.kind == "uniform" and self.high:
            return int(self.high)
        if self.kind == "lognormal" and self.sigma:
            return min(TOKENS_MOST, math.ceil(self.tokens * math.exp(float(self.sigma) * LOGNORMAL_Z_P999)))
        return self.tokens

    def draw(self, rng: random.Random) -> int:
        """One text's token count."""
        if self.kind == "uniform":
            return rng.randint(self.low, self.high)
        if self.kind == "lognormal":
            return min(TOKENS_MOST, max(1, round(self.tokens * math.exp(self.sigma * rng.gauss(0.0, 1.0)))))
        return self.tokens

# Common English words: they tokenize like real prose (about 1.1-1.4 tokens per word).
WORDS = """
the of and to in is was for on are with as his they be at one have this from or had by word but
what some we can out other were all there when up use your how said an each she which do their
time if will way about many then them write would like so these her long make thing see him two
has look more day could go come did number sound no most people my over know water than call first
who may down side been now find any new work part take get place made live where after back little
only round man year came show every good me give our under name very through just form sentence
great think say help low line differ turn cause much mean before move right boy old too same tell
does set three want air well also play small end put home read hand port large spell add even land
here must big high such follow act why ask men change went light kind off need house picture try
us again animal point mother world near build self earth father head stand own page should country
found answer school grow study still learn plant cover food sun four between state keep eye never
last let thought city tree cross farm hard start might story saw far sea draw left late run while
press close night real life few north open seem together next white children begin got walk example
ease paper group always music those both mark often letter until mile river car feet care second
book carry took science eat room friend began idea fish mountain stop once base hear horse cut sure
watch color face wood main enough plain girl usual young ready above ever red list though feel talk
bird soon body dog family direct pose leave song measure door product black short numeral class wind
question happen complete ship area half rock order fire south problem piece told knew pass since top
whole king space heard best hour better true during hundred five remember step early hold west ground
interest reach fast verb sing listen six table travel less morning ten simple several vowel toward
war lay against pattern slow center love person money serve appear road map rain rule govern pull
cold notice voice unit power town fine certain fly fall lead cry dark machine note wait plan figure
star box noun field rest correct able pound done beauty drive stood contain front teach week final
gave green quick develop ocean warm free minute strong special mind behind clear tail produce fact
""".split()

STREAM_WORDS = 60_000


class InputSource:
    """Produces the texts of successive requests for one process of a sweep.

    `chars_per_text` comes from calibration (unique and repeat modes). `stream_index` and
    `stream_count` split a corpus between processes so that no text is sent twice until the
    corpus is exhausted; after that it is reused, and `corpus_reused` counts how often.
    `lengths` (unique mode only) draws each text's token count; `last_lengths` then holds the counts
    of the last request's texts: the tokenizer's with one, else the drawn targets (None for a fixed length).
    """

    def __init__(
        self,
        mode: str,
        *,
        batch: int = 1,
        chars_per_text: int = 400,
        corpus: list[str] | None = None,
        salt: str = "",
        seed: int | None = None,
        stream_index: int = 0,
        stream_count: int = 1,
        tokenizer=None,
        tokens_per_text: int | None = None,
        lengths: Lengths | None = None,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"input mode must be one of {', '.join(MODES)}, not {mode!r}")
        if lengths is not None and lengths.fixed:
            lengths = None
        if lengths is not None and mode != "unique":
            raise ConfigError(f"a {lengths.kind} length applies to unique texts only, not to input mode {mode!r}")
        if batch < 1:
            raise ConfigError("batch (texts per request) must be at least 1")
        if mode == "corpus" and not corpus:
            raise ConfigError("input mode 'corpus' needs a non-empty corpus")
        self.mode = mode
        self.batch = batch
        self.salt = salt or secrets.token_hex(3)
        self.stream_index = stream_index
        self.stream_count = max(1, stream_count)
        self.counter = 0
        self.corpus = corpus or []
        self.corpus_pos = stream_index
        self.corpus_reused = 0
        seed = seed if seed is not None else secrets.randbits(64)
        self._rng = random.Random(seed)
        self.lengths = lengths
        # The counts come from a stream of their own: the texts' word windows stay those of the seed.
        self._length_rng = random.Random(f"{seed}:lengths")
        self.last_lengths: list[int] | None = None
        self._text_target = 0  # the drawn count of the last text made (a length distribution without tokenizer)
        words = self._rng.choices(WORDS, k=STREAM_WORDS)
        self._stream = " ".join(words)
        self._starts = []
        pos = 0
        for w in words:
            self._starts.append(pos)
            pos += len(w) + 1
        self._starts.append(pos)
        self.set_chars(chars_per_text)
        self.tokenizer = tokenizer
        self._text_tokens: int | None = None  # tokenizer count of the last text made
        self.last_tokens: int | None = None  # tokenizer count of the last request's texts (None without one)
        if tokenizer is not None:
            self._prepare_tokens(tokenizer, tokens_per_text)
        self._repeat_text = self._unique_text() if mode == "repeat" else ""
        self._repeat_tokens = self._text_tokens if mode == "repeat" else None

    def _prepare_tokens(self, tokenizer, tokens_per_text: int | None) -> None:
        self._special = len(tokenizer.encode("", add_special_tokens=True).ids)
        self.tokens_per_text = tokens_per_text
        self._corpus_tokens = None
        if self.mode == "corpus":
            self._corpus_tokens = [len(e.ids) for e in tokenizer.encode_batch(self.corpus, add_special_tokens=True)]
            return
        if not tokens_per_text and self.lengths is None:
            raise ConfigError("texts cut by a tokenizer need a token count per text")
        offsets = tokenizer.encode(self._stream, add_special_tokens=False).offsets
        stream = self._stream
        # Byte-level tokenizers include the leading space in a word's first token; others do not.
        self._tok_start = [start + 1 if stream[start:start + 1] == " " else start for start, _ in offsets]
        self._tok_end = [end for _, end in offsets]
        self._word_tokens = [i for i, start in enumerate(self._tok_start)
                             if i > 0 and start > 0 and stream[start - 1] == " "]

    def _token_window_text(self) -> str:
        """A unique text of `tokens_per_text` tokens by the tokenizer, or of a count drawn from the length
        distribution (prefix and special tokens included; never fewer than they take and one more)."""
        self.counter += 1
        prefix = f"{self.salt}{self.stream_index:02d}{self.counter:09d}"
        prefix_tokens = len(self.tokenizer.encode(prefix, add_special_tokens=False).ids)
        target = self.tokens_per_text if self.lengths is None else self.lengths.draw(self._length_rng)
        n = max(1, target - self._special - prefix_tokens)
        last = bisect.bisect_right(self._word_tokens, len(self._tok_end) - n)
        first = self._word_tokens[self._rng.randrange(0, max(1, last))]
        end = self._tok_end[min(first + n, len(self._tok_end)) - 1]
        self._text_tokens = self._special + prefix_tokens + n
        return f"{prefix} {self._stream[self._tok_start[first]:end]}"

    def set_chars(self, chars: int) -> None:
        """Set the length of the word window of unique texts, in characters."""
        self.chars_per_text, self._last_start = self._window(chars)

    def _window(self, chars: float) -> tuple[int, int]:
        """(a word window's length in characters, the last word it may start at)."""
        total = len(self._stream)
        chars = max(1, min(int(chars), total // 2))
        return chars, bisect.bisect_left(self._starts, total - chars - 1) - 1

    def _unique_text(self) -> str:
        if self.tokenizer is not None:
            return self._token_window_text()
        if self.lengths is None:
            return self._cut(self.chars_per_text, self._last_start)
        # The calibrated characters per text give the median count: scale them to this text's count.
        self._text_target = self.lengths.draw(self._length_rng)
        return self._cut(*self._window(round(self.chars_per_text * self._text_target / self.lengths.median)))

    def _cut(self, chars: int, last_start: int) -> str:
        starts = self._starts
        first = self._rng.randrange(0, last_start)
        begin = starts[first]
        end = starts[bisect.bisect_left(starts, begin + chars, first + 1)] - 1
        self.counter += 1
        return f"{self.salt}{self.stream_index:02d}{self.counter:09d} {self._stream[begin:end]}"

    def _corpus_text(self) -> str:
        if self.corpus_pos >= len(self.corpus):
            # Exhausted: start again and say so (the result reports reuse).
            self.corpus_pos = self.stream_index % len(self.corpus)
            self.corpus_reused += 1
        text = self.corpus[self.corpus_pos]
        if self.tokenizer is not None:
            self._text_tokens = self._corpus_tokens[self.corpus_pos]
        self.corpus_pos += self.stream_count
        return text

    def next_texts(self) -> list[str]:
        """The texts of the next request (`batch` of them)."""
        if self.lengths is not None:
            return self._drawn_texts()
        if self.tokenizer is None:
            if self.mode == "unique":
                return [self._unique_text() for _ in range(self.batch)]
            if self.mode == "corpus":
                return [self._corpus_text() for _ in range(self.batch)]
            return [self._repeat_text] * self.batch
        texts = []
        tokens = 0
        for _ in range(self.batch):
            if self.mode == "unique":
                texts.append(self._unique_text())
            elif self.mode == "corpus":
                texts.append(self._corpus_text())
            else:
                self._text_tokens = self._repeat_tokens
                texts.append(self._repeat_text)
            tokens += self._text_tokens
        self.last_tokens = tokens
        return texts

    def _drawn_texts(self) -> list[str]:
        """Unique texts of a length distribution, each count kept in `last_lengths`."""
        texts, counts = [], []
        for _ in range(self.batch):
            texts.append(self._unique_text())
            counts.append(self._text_tokens if self.tokenizer is not None else self._text_target)
        self.last_lengths = counts
        if self.tokenizer is not None:
            self.last_tokens = sum(counts)
        return texts

    def sample_text(self, chars: int) -> str:
        """One unique text with a word window of about `chars` characters (for calibration)."""
        if self.tokenizer is not None:
            return self._token_window_text()
        return self._cut(*self._window(chars))


def load_corpus(path: str) -> list[str]:
    """Texts from a file: one per line, or JSONL with a `text` field. Empty lines are skipped."""
    import orjson

    try:
        with open(path, encoding="utf-8") as fh:
            lines = [line.rstrip("\n") for line in fh]
    except OSError as exc:
        raise ConfigError(f"cannot read corpus file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"corpus file {path} is not UTF-8 text") from None
    texts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise ConfigError(f"corpus file {path}, line {number}: not valid JSON") from None
            text = doc.get("text") if isinstance(doc, dict) else None
            if not isinstance(text, str) or not text:
                raise ConfigError(f"corpus file {path}, line {number}: JSON line without a 'text' string")
            texts.append(text)
        else:
            texts.append(line)
    if not texts:
        raise ConfigError(f"corpus file {path} holds no texts")
    return texts


def fit_length(samples: list[tuple[int, int]], target_tokens: int) -> int:
    """Characters per text that give `target_tokens`, from (characters, measured tokens) samples.

    Tokens grow linearly with the length plus a fixed part (special tokens, the unique prefix), so
    two samples of different length give slope and intercept; one sample gives a plain ratio."""
    samples = [(n, t) for n, t in samples if n > 0 and t and t > 0]
    if not samples:
        raise ValueError("no samples to calibrate with")
    if len(samples) >= 2 and samples[-1][0] != samples[0][0]:
        (n1, t1), (n2, t2) = samples[0], samples[-1]
        slope = (t2 - t1) / (n2 - n1)
        if slope > 0:
            intercept = t1 - slope * n1
            return max(1, round((target_tokens - intercept) / slope))
    n, t = samples[-1]
    return max(1, round(target_tokens * n / t))
