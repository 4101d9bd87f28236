"""Score output files, one format per module behind one interface (`writers.py`: open_writer, read_rows):
CSV and JSONL (`lines.py`), Parquet (`parquet.py`); the columns and paths they share (`common.py`).
Scoring writes them; merge, evaluate-scores and the report page read them back."""
