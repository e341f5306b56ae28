"""`python -m bench`: how fast Taskreaper cancels, next to plain Celery, on this machine.

Each measurement lives in its own module and returns plain data; `suite` runs them in
order against services it starts itself, `report` and `plot` turn the data into
`results.json`, `RESULTS.md` and `latency.png`.
"""
