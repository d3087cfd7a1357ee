"""What is being measured: model/hardware specs and the cost model, scheduling policy, and runtimes."""
