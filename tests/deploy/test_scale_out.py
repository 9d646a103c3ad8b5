"""The scale-out proof, run as an operator runs it (`python -m services.scaleout`): 20 jobs of four
tenants on a production-shaped cluster while a worker, a trainer-service replica, a volume server
and PostgreSQL fail; every invariant it checks must hold, and every fault must have healed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from services.scaleout.proof import Workload

FAULTS = ["worker killed", "trainer replica killed", "volume server restarted", "database stopped"]
CHECKS = ["every job succeeded exactly once", "each LoRA equals the uninterrupted run's",
          "no watcher missed or repeated an event", "every webhook event delivered once per endpoint (by id)",
          "FIFO within each tenant", "round-robin across tenants (the queue's order replayed)",
          "nothing in the bucket that no record names"]


@pytest.mark.timeout(Workload.timeout_seconds + 600)
def test_twenty_jobs_of_four_tenants_survive_every_fault_exactly_once(tmp_path):
    figures = tmp_path / "outcome.json"
    env = {key: value for key, value in os.environ.items() if not key.startswith("KILN_")}
    proof = subprocess.Popen([sys.executable, "-m", "services.scaleout", "--dir", str(tmp_path / "cluster"),
                              "--json", str(figures)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        stdout, stderr = proof.communicate(timeout=Workload.timeout_seconds + 300)
    except subprocess.TimeoutExpired:
        # SIGTERM first: the proof then stops its cluster and removes its hosts.
        proof.terminate()
        stdout, stderr = proof.communicate(timeout=120)
    print(stdout[-6000:])  # the proof's report, shown when the test fails
    print(stderr[-3000:], file=sys.stderr)
    outcome = json.loads(figures.read_text())
    assert {check: wrong for check, wrong in outcome["failures"].items() if wrong} == {}
    assert sorted(outcome["failures"]) == sorted(CHECKS)
    assert [fault["name"] for fault in outcome["faults"]] == FAULTS
    # The killed worker's job was tried again: more attempts than jobs.
    assert outcome["attempts"] > Workload.jobs
    # The faults broke the watchers' streams, and they carried on from where they were.
    assert outcome["watcher_reconnects"] > 0
    assert proof.returncode == 0 and "the proof holds" in stdout
