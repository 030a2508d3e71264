"""The warehouse: DuckDB (local default) and BigQuery (production) behind one small interface."""
