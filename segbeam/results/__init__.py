"""Reading a finished run's output: DuckDB queries, summaries, the HTML report."""
