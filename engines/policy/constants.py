"""The scheduler's constants (reference/paper.md 4), each with its source. A scenario's `sim:` mapping
overrides them by the names of engines/costmodel/constants.py's `SimConstants` (which takes its
defaults from here), so both runtimes schedule with the same numbers."""

COMPUTE_QUOTA_S = 0.3    # [paper] 4.5: intra-PE attention-time quota of a forward batch (DualPath, Oracle)
ALPHA_READ_S = 3.0       # [paper] 4.2: alpha = the tokens a node reads from storage in 3 s
BETA_COMPUTE_S = 5.0     # [paper] 4.2: beta = the tokens one GPU processes in 5 s
DE_Z_FACTOR = 1.05       # [paper] 4.3: Z = 1.05 x the group's mean unfinished tokens (no reason given)
