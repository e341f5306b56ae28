"""Code shared by the API, the reaper and the workers."""
