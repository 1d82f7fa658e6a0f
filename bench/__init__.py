"""`make bench`: the system's throughput, latency and memory, measured in one run (issue 7)."""
