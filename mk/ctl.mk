# Operator targets, included from the Makefile (`include mk/ctl.mk`).
#   make status                     workers, processes, queues, task counts, reaper
#   make force-kill                 asks first; CTL_ARGS=--force skips the question,
#                                   CTL_ARGS=--status only reports
#   make monitor                    live progress of running tasks (Ctrl-C quits)
# Settings come from the environment, as for the services (DATABASE_URL, REDIS_URL, ...).

CTL_VENV ?= $(if $(VENV),$(VENV),.venv)
TASKCTL ?= $(CTL_VENV)/bin/taskctl
CTL_ARGS ?=

.PHONY: status force-kill monitor

status: $(STAMP)
	$(TASKCTL) status $(CTL_ARGS)

force-kill: $(STAMP)
	$(TASKCTL) force-kill $(CTL_ARGS)

monitor: $(STAMP)
	$(TASKCTL) monitor $(CTL_ARGS)
