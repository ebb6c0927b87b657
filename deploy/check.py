#!/usr/bin/env python3
"""Offline checks of the deployment files, run by .ci/run (needs the PyPI
packages kubernetes-validate and PyYAML):

- every manifest in deploy/k8s/kustomization.yaml validates against the
  Kubernetes schemas (strict: unknown fields are errors), and the
  kustomization lists every manifest in the folder;
- the probes, flags and names agree between the manifests and the binaries'
  real --help output (so a renamed flag breaks CI, not a deployment);
- deploy/compose.yaml parses, its build context and Dockerfile exist, its
  env_file has a committed example, and it runs 4 workers;
- deploy/Dockerfile: every COPY source exists in the build context (the
  repository root), every --from names an earlier stage, the runtime stage
  runs as a non-root user.

Usage: python3 deploy/check.py [path/to/release/bin]
"""
import pathlib
import re
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
problems = []


def check(ok, message):
    if not ok:
        problems.append(message)


def kubernetes():
    k8s = DEPLOY / "k8s"
    kustomization = yaml.safe_load((k8s / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    present = sorted(p.name for p in k8s.glob("*.yaml") if p.name != "kustomization.yaml")
    check(sorted(listed) == present, f"kustomization lists {listed}, folder has {present}")
    run = subprocess.run(
        ["kubernetes-validate", "--strict", *[str(k8s / f) for f in listed]],
        capture_output=True,
        text=True,
    )
    print(run.stdout.strip())
    check(run.returncode == 0, f"kubernetes-validate failed:\n{run.stdout}{run.stderr}")
    docs = [d for f in listed for d in yaml.safe_load_all((k8s / f).read_text()) if d]
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    coordinator = by_kind[("Deployment", "ddp-coordinator")]["spec"]["template"]["spec"]
    worker = by_kind[("Deployment", "ddp-worker")]
    check(worker["spec"]["replicas"] == 4, "workers: replicas should be 4")
    c = coordinator["containers"][0]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        check("grpc" in c.get(probe, {}), f"coordinator: {probe} should be a gRPC probe")
    check(
        c["readinessProbe"]["grpc"].get("service") == "ddp.v1.Trainer",
        "coordinator readiness should probe ddp.v1.Trainer",
    )
    service = by_kind[("Service", "ddp-coordinator")]
    port = service["spec"]["ports"][0]["port"]
    w = worker["spec"]["template"]["spec"]["containers"][0]
    check(
        f"--connect=http://ddp-coordinator:{port}" in w["args"],
        "workers should connect to the coordinator Service",
    )
    claim = coordinator["volumes"][0]["persistentVolumeClaim"]["claimName"]
    check(("PersistentVolumeClaim", claim) in by_kind, f"no PVC named {claim}")
    for container in (c, w):
        secret = next(e for e in container["env"] if e["name"] == "DDP_TOKEN")
        ref = secret["valueFrom"]["secretKeyRef"]["name"]
        check(("Secret", ref) in by_kind, f"no Secret named {ref}")
    return c["args"], w["args"]


def flags_exist(binary, args, subcommand=None):
    """Every --flag in args appears in the binary's --help."""
    if binary is None:
        return
    cmd = [str(binary)] + ([subcommand] if subcommand else []) + ["--help"]
    help_text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    for arg in args:
        if arg.startswith("--"):
            flag = arg.split("=")[0]
            check(flag in help_text, f"{binary.name}: {flag} is not a flag ({' '.join(cmd)})")


def compose():
    spec = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = spec["services"]
    check({"coordinator", "worker"} <= set(services), "compose: needs coordinator and worker")
    build = services["coordinator"]["build"]
    context = (DEPLOY / build["context"]).resolve()
    check(context == ROOT, f"compose: build context {context} is not the repository root")
    check((context / build["dockerfile"]).is_file(), "compose: Dockerfile not found")
    for name, svc in services.items():
        for env in svc.get("env_file", []):
            example = DEPLOY / (env + ".example")
            check(example.is_file(), f"compose: {name}'s env_file {env} has no {example.name}")
    check(services["worker"]["deploy"]["replicas"] == 4, "compose: 4 workers")
    return services["coordinator"]["command"], services["worker"]["command"]


def dockerfile():
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [l.strip() for l in re.sub(r"\\\n", " ", text).splitlines()]
    lines = [l for l in lines if l and not l.startswith("#")]
    stages, user = [], None
    for line in lines:
        op, _, rest = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            m = re.search(r"\bAS\s+(\S+)", rest, re.I)
            stages.append(m.group(1) if m else None)
            user = None
        elif op == "COPY":
            parts = rest.split()
            froms = [p for p in parts if p.startswith("--from=")]
            srcs = [p for p in parts if not p.startswith("--")][:-1]
            if froms:
                stage = froms[0].split("=", 1)[1]
                check(stage in stages[:-1], f"Dockerfile: COPY --from={stage}: no earlier stage")
            else:
                for src in srcs:
                    check((ROOT / src).exists(), f"Dockerfile: COPY {src}: not in the repository")
        elif op == "USER":
            user = rest
    check(len(stages) >= 2, "Dockerfile: expected a multi-stage build")
    check(user not in (None, "root", "0"), "Dockerfile: the final stage should run as non-root")
    print(f"Dockerfile: stages {stages}, runs as user {user}")


def main():
    bin_dir = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else None
    coordinator = bin_dir / "coordinator" if bin_dir else None
    worker = bin_dir / "worker" if bin_dir else None
    k8s_coordinator, k8s_worker = kubernetes()
    compose_coordinator, compose_worker = compose()
    dockerfile()
    flags_exist(coordinator, k8s_coordinator[1:] + compose_coordinator[1:], "train")
    flags_exist(worker, k8s_worker + compose_worker)
    if problems:
        print("\n".join(f"deploy check: {p}" for p in problems), file=sys.stderr)
        sys.exit(1)
    print("deploy check: all files consistent")


main()
