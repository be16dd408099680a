"""A Copy button as HTML: a click puts the text on the clipboard (no popover, nothing covering the page)."""

from __future__ import annotations

import html

# One click listener per page, installed by the first button drawn; buttons carry their text in data-copy-text.
# navigator.clipboard needs a secure context (127.0.0.1 and an ssh tunnel are); elsewhere a hidden textarea
# and execCommand("copy") do it.
COPY_SCRIPT = """<script>
if (!window.internlmDemoCopy) {
  window.internlmDemoCopy = true;
  const fallback = (text) => {
    const area = document.createElement("textarea");
    area.value = text;
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    const copied = document.execCommand("copy");
    area.remove();
    return copied ? Promise.resolve() : Promise.reject(new Error("copy refused"));
  };
  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-copy-text]");
    if (!button) return;
    const text = button.dataset.copyText;
    const copying = navigator.clipboard ? navigator.clipboard.writeText(text).catch(() => fallback(text)) : fallback(text);
    copying.then(() => { button.textContent = button.dataset.copiedLabel; },
                 () => { button.textContent = button.dataset.failedLabel; });
  });
}
</script>"""

BUTTON_STYLE = ("border: 1px solid rgba(49, 51, 63, 0.2); border-radius: 0.5rem; background: transparent; "
                "padding: 0.15rem 0.6rem; font-size: 0.85rem; cursor: pointer; color: inherit;")


def copy_button_html(text: str, label: str, copied_label: str, failed_label: str) -> str:
    """A button that copies ``text`` when clicked and then says ``copied_label`` (or ``failed_label``)."""
    return (f'<button type="button" class="internlm-demo-copy" style="{BUTTON_STYLE}" '
            f'data-copy-text="{html.escape(text)}" data-copied-label="{html.escape(copied_label)}" '
            f'data-failed-label="{html.escape(failed_label)}">{html.escape(label)}</button>{COPY_SCRIPT}')
