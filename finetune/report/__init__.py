"""The report: its charts and the blind ratings it shows."""
