"""The pure domain of the grid: job statuses, pricing and the supervisor's decisions (no I/O)."""
