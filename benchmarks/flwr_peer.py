"""Flower's side of ``benchmarks/round_overhead.py``: the same evaluate-only federation, in Flower.

Run with the Flower venv (``bash benchmarks/setup_flwr.sh`` makes it), never with fedmq's: this
file imports nothing from fedmq, so the two frameworks never share a dependency.

    benchmarks/.venv-flwr/bin/python benchmarks/flwr_peer.py --clients 2 --rounds 5

A Flower server (``start_server``, FedAvg, fraction_fit 1.0, no evaluation) and N NumPyClient
processes on 127.0.0.1 over gRPC. A client's ``fit`` loads the weights it got into its ResNet18 and
returns them unchanged, as a fedmq silo does with ``--local-epochs 0``. Prints one JSON object:
per round the server-side seconds (configure_fit done -> aggregate_fit done, so the wait for the
clients to connect is left out) and the bytes moved.

Bytes are counted two ways. ``lo_bytes``: the loopback interface's received-bytes counter read at
the round's start and end; ``round_overhead.py`` runs this script in a private network namespace,
so that counter holds this federation's traffic alone, framing and TCP/IP headers included.
``payload_bytes``: the serialized tensors sent and received (the Parameters' buffers).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Telemetry would try to reach the internet from every process; Flower reads these at import.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def lo_rx_bytes() -> int | None:
    """Bytes received on the loopback interface so far (each byte moved on loopback counts once)."""
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, fields = line.partition(":")
        if name.strip() == "lo":
            return int(fields.split()[0])
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def resnet18(num_classes: int, seed: int = 0):
    import torch
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None, num_classes=num_classes)


def state_arrays(model) -> list:
    """The full state dict, buffers included, as fedmq sends it (122 tensors for ResNet18)."""
    return [t.detach().cpu().numpy() for t in model.state_dict().values()]


def load_arrays(model, arrays: list) -> None:
    import torch

    keys = list(model.state_dict().keys())
    model.load_state_dict({k: torch.from_numpy(a.copy()) for k, a in zip(keys, arrays)}, strict=True)


# -- server ------------------------------------------------------------------------------------------
def timed_fedavg(clients: int, initial):
    """FedAvg that records, per round, when it began and ended and the bytes it moved."""
    from flwr.server.strategy import FedAvg

    def payload(parameters) -> int:
        return sum(len(t) for t in parameters.tensors)

    class TimedFedAvg(FedAvg):
        def __init__(self) -> None:
            super().__init__(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=clients,
                             min_evaluate_clients=0, min_available_clients=clients, initial_parameters=initial)
            self.rounds: dict[int, dict] = {}

        def configure_fit(self, server_round, parameters, client_manager):
            # super() blocks until enough clients are connected: the round starts once it returns.
            instructions = super().configure_fit(server_round, parameters, client_manager)
            self.rounds[server_round] = {"start": time.time(), "lo_start": lo_rx_bytes(),
                                         "sent_payload": sum(payload(ins.parameters) for _, ins in instructions)}
            return instructions

        def aggregate_fit(self, server_round, results, failures):
            aggregated = super().aggregate_fit(server_round, results, failures)
            record = self.rounds[server_round]
            record.update(end=time.time(), lo_end=lo_rx_bytes(), failures=len(failures), results=len(results),
                          received_payload=sum(payload(res.parameters) for _, res in results))
            return aggregated

    return TimedFedAvg()


def round_rows(rounds: dict[int, dict]) -> list[dict]:
    rows, previous_end = [], None
    for number in sorted(rounds):
        r = rounds[number]
        lo = r["lo_end"] - r["lo_start"] if r["lo_start"] is not None and r.get("lo_end") is not None else None
        rows.append({"round": number, "seconds": r["end"] - r["start"], "lo_bytes": lo,
                     "payload_bytes": r["sent_payload"] + r["received_payload"], "results": r["results"],
                     "failures": r["failures"],
                     "cycle_seconds": None if previous_end is None else r["end"] - previous_end})
        previous_end = r["end"]
    return rows


def run_server(port: int, clients: int, rounds: int, num_classes: int, result: Path) -> None:
    import flwr
    from flwr.common import ndarrays_to_parameters

    # The server holds the initial weights, so no round-0 request to a client is needed (fedmq asks one).
    strategy = timed_fedavg(clients, ndarrays_to_parameters(state_arrays(resnet18(num_classes))))
    flwr.server.start_server(server_address=f"127.0.0.1:{port}", strategy=strategy,
                             config=flwr.server.ServerConfig(num_rounds=rounds))
    result.write_text(json.dumps({"flwr_version": flwr.__version__, "rounds": round_rows(strategy.rounds)}))


# -- client ------------------------------------------------------------------------------------------
def run_client(port: int, num_classes: int) -> None:
    import flwr
    from flwr.client import NumPyClient

    model = resnet18(num_classes)

    class Echo(NumPyClient):
        """Trains nothing: loads what it got and sends it back, like a fedmq silo with --local-epochs 0."""

        def get_parameters(self, config):
            return state_arrays(model)

        def fit(self, parameters, config):
            load_arrays(model, parameters)
            return state_arrays(model), 16, {}

    flwr.client.start_client(server_address=f"127.0.0.1:{port}", client=Echo().to_client(), insecure=True)


# -- the federation --------------------------------------------------------------------------------------
def run_federation(clients: int, rounds: int, num_classes: int, timeout: float) -> dict:
    """Start the server and the clients as separate processes; return the server's figures."""
    port = free_port()
    me = [sys.executable, str(Path(__file__).resolve())]
    common = ["--port", str(port), "--num-classes", str(num_classes)]
    with tempfile.TemporaryDirectory(prefix="flwr-peer-") as tmp:
        result = Path(tmp) / "result.json"
        logs = open(Path(tmp) / "flwr.log", "w+b")
        server = subprocess.Popen([*me, "--role", "server", "--clients", str(clients), "--rounds", str(rounds),
                                   "--result", str(result), *common], stdout=logs, stderr=subprocess.STDOUT)
        procs = [subprocess.Popen([*me, "--role", "client", *common], stdout=logs, stderr=subprocess.STDOUT)
                 for _ in range(clients)]
        try:
            code = server.wait(timeout=timeout)
            for p in procs:
                p.wait(timeout=60)
        finally:
            for p in [server, *procs]:
                if p.poll() is None:
                    p.kill()
        if code != 0 or not result.exists():
            logs.seek(0)
            raise SystemExit(f"the Flower server exited {code}:\n{logs.read().decode(errors='replace')[-3000:]}")
        logs.close()
        return json.loads(result.read_text())


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=["federation", "server", "client"], default="federation")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--port", type=int)
    parser.add_argument("--result", type=Path)
    parser.add_argument("--timeout", type=float, default=600.0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.role == "server":
        run_server(args.port, args.clients, args.rounds, args.num_classes, args.result)
    elif args.role == "client":
        run_client(args.port, args.num_classes)
    else:
        figures = run_federation(args.clients, args.rounds, args.num_classes, args.timeout)
        print(json.dumps({"clients": args.clients, **figures}))


if __name__ == "__main__":
    main()
