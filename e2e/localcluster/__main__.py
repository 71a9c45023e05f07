"""`python -m e2e.localcluster build|up|down|status [--name NAME] [--real-node] [--nodes N]`:
what the Makefile calls."""

from __future__ import annotations

import argparse
import sys
import time

from e2e import images

from .cluster import BASE_CPU_NODES, LocalCluster
from .toolchain import NODE_TOOLS, STORE_TOOLS, TOOLS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.localcluster")
    parser.add_argument("action", choices=["build", "up", "down", "status"])
    parser.add_argument("--name", default="dev", help="cluster name; clusters can run side by side")
    parser.add_argument(
        "--real-node", action="store_true", help="also a real containerd+kubelet node (root)"
    )
    parser.add_argument(
        "--nodes",
        type=int,
        default=BASE_CPU_NODES,
        help=f"simulated CPU nodes (default {BASE_CPU_NODES}; e.g. 50 for 1,000 InferenceServices)",
    )
    args = parser.parse_args(argv)
    if args.action == "build":
        for tool in (*TOOLS, *STORE_TOOLS, *(NODE_TOOLS if args.real_node else ())):
            tool.build()
        if args.real_node:
            images.pause()
        return 0
    cluster = LocalCluster(args.name, real_node=args.real_node, cpu_nodes=args.nodes)
    if args.action == "down":
        cluster.down()
        print(f"cluster {args.name!r} stopped and its state removed")
        return 0
    if args.action == "status":
        running = cluster.is_running()
        print(f"cluster {args.name!r}: {'running' if running else 'not running'}")
        return 0 if running else 1
    started = time.monotonic()
    already = cluster.is_running()
    cluster.up()
    verb = "already running" if already else f"up in {time.monotonic() - started:.1f}s"
    print(f"cluster {args.name!r} {verb} ({cluster.server}), all nodes Ready.", file=sys.stderr)
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
