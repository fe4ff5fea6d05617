"""Form fields for the free-text inputs of targets, plans and runs: load levels, URL lists, key/values.

Each field turns text into the value stored on the model and explains, in plain words, what is
wrong with the text when it cannot.
"""
import json
import re

from django import forms
from django.core.exceptions import ValidationError

from benchmarks.plan import format_threshold
from portal.sweeps.models import CONFIG_KEY_RE
from portal.sweeps.rules import NO_BASE_URL, parse_url_list


class ThresholdsField(forms.CharField):
    """One pass/fail threshold per line ("p99_ms <= 500", "error_rate <= 0.05 at 16, 32") -> the lines;
    blank -> None (the default). What a threshold may say is the plan rule's (benchmarks.plan)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("widget", forms.Textarea(attrs={"rows": 3}))
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def prepare_value(self, value):
        if isinstance(value, (list, tuple)):
            return "\n".join(self._line(item) for item in value)
        return value

    @staticmethod
    def _line(item) -> str:
        keys = {"figure", "op", "limit", "levels"}
        if isinstance(item, dict) and {"figure", "limit"} <= set(item) <= keys:
            return format_threshold({"op": "", **item, "levels": item.get("levels")})
        # Anything else is shown as given, and the plan rule says what is wrong with it.
        return item if isinstance(item, str) else json.dumps(item)

    def to_python(self, value):
        if isinstance(value, (list, tuple)):
            value = self.prepare_value(value)
        lines = [line.strip() for line in (value or "").splitlines() if line.strip()]
        return lines or None


def format_number(value: float) -> str:
    """1.0 -> '1', 2.5 -> '2.5': levels written back the way a person types them."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class LevelsField(forms.CharField):
    """'1, 4, 8, 16' -> [1, 4, 8, 16]: numbers, in the order given.

    Which numbers a plan may hold (positive, distinct, whole for concurrency, within the
    installation's limits) is the plan rule's to say (benchmarks.plan, through PlanForm.clean).
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("help_text", "Comma-separated, run in the order given, e.g. 1, 4, 8, 16, 32, 64.")
        super().__init__(**kwargs)

    def prepare_value(self, value):
        if isinstance(value, (list, tuple)):
            return ", ".join(format_number(v) for v in value)
        return value

    def to_python(self, value):
        text = (value or "").strip()
        if not text:
            return []
        levels: list[float] = []
        for token in re.split(r"[,\s;]+", text):
            if not token:
                continue
            try:
                number = float(token)
            except ValueError:
                raise ValidationError(
                    f"“{token}” is not a number. Separate levels with commas, e.g. 1, 4, 8, 16."
                ) from None
            levels.append(int(number) if number.is_integer() else number)
        return levels

    def validate(self, value):
        if not value and self.required:
            raise ValidationError("Enter at least one level, e.g. 1, 4, 8, 16.", code="required")


class URLListField(forms.CharField):
    """One http(s) URL per line -> list of URLs without trailing slashes."""

    widget = forms.Textarea(attrs={"rows": 3})

    def prepare_value(self, value):
        if isinstance(value, (list, tuple)):
            return "\n".join(value)
        return value

    def to_python(self, value):
        return parse_url_list((value or "").splitlines())

    def validate(self, value):
        if not value and self.required:
            raise ValidationError(NO_BASE_URL, code="required")


class KeyValueField(forms.CharField):
    """Lines of '--max-running-requests 128' or 'key=value' -> {key: value}.

    A flag on its own ('--enable-metrics') gets the empty string as its value.
    """

    widget = forms.Textarea(attrs={"rows": 4, "placeholder": "--max-running-requests 128\n--dtype=bfloat16"})

    def prepare_value(self, value):
        if isinstance(value, dict):
            return "\n".join(f"{k} {v}".rstrip() for k, v in value.items())
        return value

    def to_python(self, value):
        pairs: dict[str, str] = {}
        for number, line in enumerate((value or "").splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            eq, space = line.find("="), re.search(r"\s", line)
            if eq != -1 and (space is None or eq < space.start()):
                key, val = line[:eq].strip(), line[eq + 1 :].strip()
            elif space is not None:
                key, val = line[: space.start()], line[space.start() :].strip()
            else:
                key, val = line, ""
            if not key:
                raise ValidationError(f"Line {number} (“{line}”) has a value but no key.")
            if not CONFIG_KEY_RE.match(key):
                raise ValidationError(
                    f"Line {number}: “{key}” is not a key; keys use letters, digits and - _ . / : only."
                )
            if len(key) > 100 or len(val) > 1000:
                raise ValidationError(f"Line {number} is too long (keys up to 100, values up to 1000 characters).")
            if key in pairs:
                raise ValidationError(f"Line {number}: “{key}” is already set above; give each key once.")
            pairs[key] = val
        return pairs


class ShapeValuesField(forms.CharField):
    """'32, 128, 512' or 'float, base64' -> [32, 128, 512] / ["float", "base64"]; blank -> None. Which
    values a shape axis may hold is the plan rule's (benchmarks.plan, through PlanForm.clean)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def prepare_value(self, value):
        if isinstance(value, (list, tuple)):
            return ", ".join(format_number(v) if isinstance(v, int | float) else str(v) for v in value)
        return value

    def to_python(self, value):
        if isinstance(value, (list, tuple)):
            return list(value)
        parts = [part for part in re.split(r"[,\s;]+", (value or "").strip()) if part]
        if not parts:
            return None
        out = []
        for part in parts:
            try:
                number = float(part)
            except ValueError:
                out.append(part)
                continue
            out.append(int(number) if number.is_integer() else number)
        return out
