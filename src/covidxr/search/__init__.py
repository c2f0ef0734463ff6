"""Search stage: grid search over training settings with Optuna (resumable, many workers), leaderboard,
and comparison of finished runs."""
