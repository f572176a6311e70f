"""The batch service: run manifests, the stage jobs, submission, status, the TUI, scheduler backends."""
