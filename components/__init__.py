"""KFP components of the ensemw2s pipeline (one per step); see components/steps.py."""
