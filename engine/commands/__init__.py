

def add_loop_options(p, what: str = "frames") -> None:
    """The options of the long-running data-path commands (run, host)."""
    p.add_argument("--config", metavar="CFG", help="policy file (default: the built-in policy)")
    p.add_argument("--batch", type=int, default=256, metavar="N", help=f"{what} per batch (default 256)")
    p.add_argument("--stats-interval", type=float, default=5.0, metavar="S",
                   help="seconds between summary lines, 0 for none (default 5)")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="stop after S seconds (default: run until SIGINT/SIGTERM)")
