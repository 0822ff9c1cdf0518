"""Reading run directories and exporting what they found (tables, CSV/JSON, Markdown/HTML)."""
