

def add_loop_options(p, what: str = "frames") -> None:
    """The options of the long-running data-path commands (run, host)."""
    p.add_argument("--config", metavar="CFG", help="policy file (default: the built-in policy)")
    p.add_argument("--batch", type=int, default=256, metavar="N", help=f"{what} per batch (default 256)")
    p.add_argument("--stats-interval", type=float, default=60.0, metavar="S",
                   help="seconds between logfmt summary lines, 0 for none (default 60)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="log only lines at this level or above (default info); under systemd the "
                        "journal gets each line's level")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="stop after S seconds (default: run until SIGINT/SIGTERM)")


def register_engine(sub, name: str, helptext: str, description: str, epilog: str, what: str, mode: str) -> None:
    """The parser of ``mmr run`` / ``mmr host``: the same options, its own texts."""
    import argparse

    p = sub.add_parser(name, help=helptext, description=description, epilog=epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_loop_options(p, what)
    if mode == "router":
        p.add_argument("--workers", type=int, default=None, metavar="N",
                       help="forwarding threads, 1 to 64 (default: [engine] workers, else the CPUs "
                            "mmr may use, at most the smallest RX queue count of its devices)")
    p.set_defaults(func=lambda args: run_engine(args, mode))


def run_engine(args, mode: str) -> int:
    """``mmr run`` / ``mmr host``: load the policy (the mode's built-in by default), build the
    engine, run it until a signal or --duration."""
    from engine.config import load_config

    if mode == "host":
        from engine.host import Host as Engine
        cfg = load_config(args.config, default="default-host.toml")
    else:
        from engine.router import Router as Engine
        cfg = load_config(args.config)
    if args.stats_interval < 0 or args.stats_interval != args.stats_interval:
        from engine.errors import UserError
        raise UserError(f"--stats-interval {args.stats_interval}: use 0 (no summary) or a positive number of seconds")
    workers = getattr(args, "workers", None)
    if workers is not None and not 1 <= workers <= 64:
        from engine.errors import UserError
        raise UserError(f"--workers {workers}: use 1 to 64 forwarding threads")
    kw = {"workers": workers} if workers is not None else {}
    Engine(cfg, batch=args.batch, stats_interval=args.stats_interval, log_level=args.log_level, **kw).run(args.duration)
    return 0
