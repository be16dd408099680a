"""What the pages share: conversation state and handlers, transcripts, Markdown, Copy, the model panel's facts."""
