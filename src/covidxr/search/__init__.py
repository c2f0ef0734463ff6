"""Search stage: grid search over training settings with Optuna (resumable, many workers), leaderboard,
and comparison of finished runs. Optuna is the optional [search] extra: without it, importing this package is
one clear error with the install line."""

from covidxr.extras import require

require("search", "optuna")
