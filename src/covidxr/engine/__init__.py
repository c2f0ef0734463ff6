"""The training engine every stage that learns shares: the one loop (loop.py) and its history.csv (history.py)."""
