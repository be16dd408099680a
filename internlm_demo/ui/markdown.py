"""Model text as chat-bubble Markdown."""

from __future__ import annotations

import re

# Fenced blocks (also one still open while streaming) and inline code spans: left as they are.
CODE_PATTERN = re.compile(r"(```.*?(?:```|\Z)|`[^`\n]*`)", re.DOTALL)
DISPLAY_MATH = re.compile(r"\\\[(.+?)\\\]", re.DOTALL)
INLINE_MATH = re.compile(r"\\\((.+?)\\\)", re.DOTALL)


def display_markdown(text: str) -> str:
    """Markdown for a chat bubble: LaTeX written as \\(…\\) and \\[…\\] becomes $…$ and $$…$$,
    which Streamlit renders; code is left untouched."""
    parts = CODE_PATTERN.split(text)
    for i in range(0, len(parts), 2):  # even indices lie outside code
        parts[i] = INLINE_MATH.sub(r"$\1$", DISPLAY_MATH.sub(r"$$\1$$", parts[i]))
    return "".join(parts)
