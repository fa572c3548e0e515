"""``make demo``: apply ``samples/`` to the local control plane and show the result.

It waits until the sample Deployment is Ready in every member it was propagated to,
then prints where it runs, its aggregated status, and what each member's own API
server says about it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from kubernetes import client, config

from archipel import structs
from archipel.client import Client, ClientError, Config

LOCAL = Path(".local")


def main() -> int:
    archipel = [sys.executable, "-m", "archipel.cli.main"]
    subprocess.run([*archipel, "apply", "-f", "samples/"], check=True)
    api = Client(Config.load(LOCAL / "archipel.yaml"))
    deadline = time.monotonic() + 180
    print("waiting for demo/web to be Ready in every member ...", flush=True)
    while True:
        try:
            manifest = structs.from_struct(
                api.get_template("apps/v1", "Deployment", "web", "demo").manifest
            )
        except ClientError:
            manifest = {}
        status = manifest.get("status", {})
        wanted = manifest.get("spec", {}).get("replicas", 0) * 2
        if wanted and status.get("readyReplicas") == wanted and "observedGeneration" in status:
            break
        if time.monotonic() > deadline:
            print(f"error: not Ready after 180s; status {json.dumps(status)}", file=sys.stderr)
            return 1
        time.sleep(1)
    api.close()
    subprocess.run([*archipel, "clusters"], check=True)
    print()
    subprocess.run([*archipel, "describe", "deployment", "web", "-n", "demo"], check=True)
    print()
    state = json.loads((LOCAL / "members" / "state.json").read_text())
    for name, member in state["members"].items():
        api_client = config.new_client_from_config(member["kubeconfig"])  # type: ignore[no-untyped-call]
        deployment = client.AppsV1Api(api_client).read_namespaced_deployment("web", "demo")
        ready_replicas = deployment.status.ready_replicas if deployment.status else 0
        wanted = deployment.spec.replicas if deployment.spec else 0
        ready = f"{ready_replicas or 0}/{wanted}"
        print(f"{name}: deployment demo/web ready {ready} (from the member's own API server)")
    print("\nThe sample app is propagated. Try: .venv/bin/archipel get deployments -n demo")
    print("Stop everything with: make down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
