"""What the pages share: conversation state and handlers, transcripts, and every label (i18n)."""
