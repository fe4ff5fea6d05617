"""Text renderers so `?format=csv` and `?format=md` select CSV and Markdown exports."""
import json

from rest_framework.renderers import BaseRenderer


class _TextRenderer(BaseRenderer):
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        if data is None:
            return b""
        if isinstance(data, str):
            return data.encode(self.charset)
        # An error (dict) answered to a CSV/Markdown request: readable JSON text rather than nothing.
        return json.dumps(data, indent=2, default=str).encode(self.charset)


class CSVRenderer(_TextRenderer):
    media_type = "text/csv"
    format = "csv"


class MarkdownRenderer(_TextRenderer):
    media_type = "text/markdown"
    format = "md"
