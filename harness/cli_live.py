"""`dualpath engine --role storage|pe|de|router --config FILE`: one part of a live cluster (engines/live).

The config is a JSON or YAML mapping (the part's settings; `backend: live` writes one per part). The part
binds 127.0.0.1 unless its config says `host`; port 0 takes free ports. Once it listens it prints one line
on stdout, `READY {"role": ..., "http_port": N, "data_port": M, "pid": P}`, which is how the harness learns
its ports. SIGINT and SIGTERM stop it cleanly (exit 0).
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import yaml

from traces.errors import InputError

ROLES = ("storage", "pe", "de", "router")
BUILT = ROLES
STORAGE_KEYS = ("storage_dir", "layers", "block_tokens", "bytes_per_token_layer", "snic_bytes_s", "nodes")


def register(sub) -> None:
    e = sub.add_parser("engine", help="run one part of a live cluster (storage, pe, de, router)",
                       description="Run one part of a live cluster; prints `READY {json}` once it listens.")
    e.add_argument("--role", required=True, choices=ROLES)
    e.add_argument("--config", required=True, help="the part's settings (JSON or YAML)")
    e.set_defaults(func=cmd_engine)
    v = sub.add_parser("serve", help="run a live scenario's cluster standalone (prints the router URL)",
                       description="Start the cluster of a `backend: live` scenario for one system and serve "
                       "until Ctrl-C or SIGTERM; every process is stopped on the way out.")
    v.add_argument("scenario", help="scenario YAML (its cluster, model, hardware and live keys)")
    v.add_argument("--system", help="the scheduling system (default: the scenario's first)")
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    v.set_defaults(func=cmd_serve)


def load_config(path: str, role: str) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", path=path) from None
    except yaml.YAMLError as exc:
        raise InputError(f"not YAML/JSON: {str(exc).splitlines()[0]}", path=path) from None
    if not isinstance(data, dict):
        raise InputError("a part's config is a mapping", path=path)
    if role == "storage":
        for k in STORAGE_KEYS:
            if k not in data:
                raise InputError(f"required for role storage ({', '.join(STORAGE_KEYS)})", path=path, field=k)
        for k in STORAGE_KEYS[1:]:
            if not isinstance(data[k], (int, float)) or isinstance(data[k], bool) or data[k] <= 0:
                raise InputError(f"must be a number > 0, got {data[k]!r}", path=path, field=k)
    return data


STOP_GRACE_S = 5  # seconds a part may take to stop after SIGINT/SIGTERM (its parent's death included)


def cmd_engine(args) -> int:
    if args.role not in BUILT:
        raise InputError(f"role {args.role} is not built yet (built: {', '.join(BUILT)})", field="--role")
    cfg = load_config(args.config, args.role)
    from engines.live import engine, router, storage_service
    runners = {"storage": lambda: storage_service.run(cfg, ready), "pe": lambda: engine.run(cfg, "pe", ready),
               "de": lambda: engine.run(cfg, "de", ready), "router": lambda: router.run(cfg, ready)}

    def ready(http_port: int, data_port: int) -> None:
        print("READY " + json.dumps({"role": args.role, "http_port": http_port, "data_port": data_port,
                                     "pid": os.getpid()}), flush=True)

    async def main():
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        def stop() -> None:
            signal.alarm(STOP_GRACE_S)  # an orderly stop that hangs is ended by SIGALRM's default action
            task.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        try:
            await runners[args.role]()
        except asyncio.CancelledError:
            pass
    asyncio.run(main())
    if cfg.get("transport") == "nixl":  # issue 17: NIXL can crash in the interpreter's teardown
        from engines.live.nixl import exit_now
        exit_now(0)
    return 0


def cmd_serve(args) -> int:
    from engines.contract import SYSTEMS
    from harness import backend_live
    from harness.scenario import load_scenario

    scenario = load_scenario(args.scenario, args.overrides)
    system = args.system or scenario["systems"][0]
    if system not in SYSTEMS:
        raise InputError(f"must be one of {', '.join(SYSTEMS)}, got {system!r}", field="--system")
    backend_live.check({**scenario, "_path": args.scenario}, None)
    stop = {"came": False}

    def on_signal(signum, frame):
        stop["came"] = True
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        with backend_live.Cluster(scenario, system) as cluster:
            print(cluster.router_url, flush=True)
            try:
                _wait(cluster)
            except KeyboardInterrupt:
                pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _wait(cluster) -> None:
    """Until Ctrl-C / SIGTERM (KeyboardInterrupt), or until the cluster cannot serve (exit 1 then): the
    router or the storage died, or every PE or every DE did. An engine that dies while others of its role
    are left is named once; the router serves on the others (failover)."""
    import time
    told: set[str] = set()
    names = [name for name, _ in cluster.procs]
    while True:
        dead = set(cluster.dead())
        for name in sorted(dead - told):
            print(f"dualpath serve: {name} died", file=sys.stderr, flush=True)
        told |= dead
        fatal = [n for n in ("router", "storage") if n in dead] + \
            [f"every {role}" for role in ("pe", "de") if all(n in dead for n in names if n.startswith(role))]
        if fatal:
            print(f"dualpath serve: {', '.join(fatal)} gone; stopping the cluster", file=sys.stderr)
            raise SystemExit(1)
        time.sleep(0.5)


def main(argv=None) -> int:
    """`python -m harness.cli_live --role R --config FILE`: what `dualpath engine` runs, without building
    the whole CLI (its imports, pandas and pyarrow among them, cost each part of a cluster a second)."""
    import argparse
    p = argparse.ArgumentParser(prog="dualpath engine")
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--config", required=True)
    try:
        return cmd_engine(p.parse_args(argv))
    except InputError as exc:
        print(exc.render(), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
