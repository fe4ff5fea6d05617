"""`python -m benchmarks <command>`: run, probe, simulate, gpu-agent."""
import sys


def main(argv: list[str] | None = None) -> int:
    """Dispatch to the command's module (imported only when that command runs)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "simulate":
        from benchmarks.simulator import main as simulate

        return simulate(argv[1:]) or 0
    if argv and argv[0] == "gpu-agent":
        from benchmarks.telemetry.agent import main as gpu_agent

        return gpu_agent(argv[1:]) or 0
    from benchmarks.cli import main as cli

    return cli(argv)


if __name__ == "__main__":
    sys.exit(main())
