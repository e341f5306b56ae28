"""taskctl: the operator's command line (status, force-kill, monitor, cancel, resume, submit)."""
