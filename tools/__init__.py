"""Python utilities users run (scene generator, resizing, summaries)."""
