"""The reaper: executes cancellations and makes the DB converge to reality."""
