# The dashboard's picture in docs/. Needs Debian's chromium and chromium-driver, and a
# PostgreSQL and Redis to point at (DATABASE_URL, REDIS_URL; the local defaults otherwise).
.PHONY: screenshot

screenshot: $(STAMP)
	$(PY) -m docs.screenshot
