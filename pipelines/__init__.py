"""KFP pipelines: the EnsemW2S DAG (ensemw2s.py)."""
