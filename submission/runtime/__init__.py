"""The supervisor side, torch-free (tests/test_boundary.py checks it).

Run, workers, scheduler, budget, watchdog, memory plan, records, machine probes, file safety, the
fault seam.
"""
