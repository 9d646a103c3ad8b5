"""Trainer workers: lease one job at a time from the trainer service and run it in a child process."""
