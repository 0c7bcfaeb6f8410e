"""From a checkpoint to probabilities: batches and ensembles (predictor), study folders on disk (study_files),
Grad-CAM (explain)."""
