"""Checks rendered deploy/k8s manifests (scripts/check-k8s.sh runs this).

Usage: check_manifests.py --kubernetes-version V --crds DIR NAME=FILE...

Each FILE is one `kubectl kustomize` output; NAME says which in messages.
Exits 1 listing every problem found, in every file.
"""

import argparse
import base64
import pathlib
import sys

import jsonschema
import kubernetes_validate
import yaml

# What the services do on SIGTERM, in seconds (their startup.rs): the grace
# period must outlast it.
#   order-api: requests in flight, each bounded by ORDER_DEADLINE_SECS, then
#     up to 10 s for the relay; after the preStop pause.
#   order-processor: up to 30 s for the batch in hand, then 30 s for the
#     email sender.
API_RELAY_STOP_SECS = 10
PROCESSOR_DRAIN_SECS = 30 + 30

SERVICES = {
    "order-api": {
        "probes": {
            "startupProbe": "/api/health",
            "livenessProbe": "/api/health",
            "readinessProbe": "/api/ready",
        },
        "metrics_setting": "API_METRICS_ADDR",
    },
    "order-processor": {
        "probes": {
            "startupProbe": "/processor/api/health",
            "livenessProbe": "/processor/api/health",
            "readinessProbe": "/processor/api/ready",
        },
        "metrics_setting": "PROCESSOR_METRICS_ADDR",
    },
}
AWS_KEY_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
# LocalStack's documented placeholder: accepted only beside an endpoint URL.
LOCALSTACK_PLACEHOLDER = "test"


def load_crd_schemas(crd_dir):
    """(apiVersion, kind) -> openAPIV3Schema of each CRD kept in crd_dir."""
    schemas = {}
    for path in sorted(pathlib.Path(crd_dir).glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


class Checker:
    def __init__(self, name, resources, k8s_version, crd_schemas):
        self.name = name
        self.resources = resources
        self.k8s_version = k8s_version
        self.crd_schemas = crd_schemas
        self.problems = []

    def problem(self, what, message):
        self.problems.append(f"{self.name}: {what}: {message}")

    def find(self, kind, name=None):
        return [
            r
            for r in self.resources
            if r.get("kind") == kind and (name is None or r["metadata"]["name"] == name)
        ]

    @staticmethod
    def ident(resource):
        return f"{resource.get('kind')}/{resource.get('metadata', {}).get('name')}"

    def validate_schemas(self):
        for resource in self.resources:
            key = (resource.get("apiVersion"), resource.get("kind"))
            if key in self.crd_schemas:
                validator = jsonschema.Draft7Validator(self.crd_schemas[key])
                for error in validator.iter_errors(resource):
                    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
                    self.problem(self.ident(resource), f"KEDA CRD schema, at {where}: {error.message}")
                # The CRD schema allows unknown fields nowhere but says so
                # only per object; check the spec's own keys too.
                self.unknown_fields(resource, self.crd_schemas[key], self.ident(resource))
                continue
            if key[0] and key[0].startswith("keda.sh/"):
                self.problem(self.ident(resource), f"no CRD schema kept for {key}")
                continue
            try:
                kubernetes_validate.validate(resource, self.k8s_version, strict=True)
            except kubernetes_validate.ValidationError as e:
                where = "/".join(str(p) for p in e.path) or "(root)"
                self.problem(self.ident(resource), f"Kubernetes {self.k8s_version} schema, at {where}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError:
                self.problem(self.ident(resource), f"no Kubernetes {self.k8s_version} schema for {key}")

    def unknown_fields(self, value, schema, where):
        """CRD schemas reject unknown fields at apply time (structural
        pruning drops them silently); a misspelt field is a mistake here."""
        if not isinstance(value, dict) or not isinstance(schema, dict):
            return
        properties = schema.get("properties")
        if properties is None or schema.get("x-kubernetes-preserve-unknown-fields"):
            if isinstance(schema.get("additionalProperties"), dict):
                for key, item in value.items():
                    self.unknown_fields(item, schema["additionalProperties"], f"{where}/{key}")
            return
        for key, item in value.items():
            if key in ("apiVersion", "kind", "metadata") and where.count("/") == 1:
                continue
            if key not in properties:
                self.problem(where, f"field '{key}' is not in the CRD schema")
                continue
            sub = properties[key]
            if isinstance(item, list) and isinstance(sub.get("items"), dict):
                for index, element in enumerate(item):
                    self.unknown_fields(element, sub["items"], f"{where}/{key}/{index}")
            else:
                self.unknown_fields(item, sub, f"{where}/{key}")

    def settings(self, container):
        """The container's settings from its env and the ConfigMaps and
        Secrets rendered here."""
        values = {}
        for source in container.get("envFrom") or []:
            ref = source.get("configMapRef") or {}
            for config_map in self.find("ConfigMap", ref.get("name")) if ref else []:
                values.update(config_map.get("data") or {})
            ref = source.get("secretRef") or {}
            for secret in self.find("Secret", ref.get("name")) if ref else []:
                for key, value in (secret.get("data") or {}).items():
                    values[key] = base64.b64decode(value).decode()
                values.update(secret.get("stringData") or {})
        for var in container.get("env") or []:
            values[var["name"]] = var.get("value", "")
        return values

    def check_service(self, service, rules):
        deployments = self.find("Deployment", service)
        if not deployments:
            self.problem(service, "no Deployment")
            return
        deployment = deployments[0]
        what = f"Deployment/{service}"
        pod = deployment["spec"]["template"]
        pod_spec = pod["spec"]
        containers = {c["name"]: c for c in pod_spec["containers"]}
        container = containers.get(service)
        if container is None:
            self.problem(what, f"no container named {service}")
            return
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports") or []}
        settings = self.settings(container)

        image = container.get("image", "")
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        if not tag or tag == "latest":
            self.problem(what, f"image {image!r} has no fixed tag")

        for probe_name, path in rules["probes"].items():
            probe = container.get(probe_name)
            if not probe:
                self.problem(what, f"no {probe_name}")
                continue
            http = probe.get("httpGet") or {}
            if http.get("path") != path:
                self.problem(what, f"{probe_name} asks {http.get('path')!r}, not {path}")
            port = http.get("port")
            if port not in ports and port not in ports.values():
                self.problem(what, f"{probe_name} probes port {port!r}, which the container does not declare")

        resources = container.get("resources") or {}
        for kind in ("cpu", "memory"):
            if kind not in (resources.get("requests") or {}):
                self.problem(what, f"no {kind} request")
        if "memory" not in (resources.get("limits") or {}):
            self.problem(what, "no memory limit")

        pod_security = pod_spec.get("securityContext") or {}
        security = container.get("securityContext") or {}
        if not (security.get("runAsNonRoot", pod_security.get("runAsNonRoot"))):
            self.problem(what, "runAsNonRoot is not true")
        if security.get("runAsUser", pod_security.get("runAsUser")) in (None, 0):
            self.problem(what, "runAsUser is not a non-root uid (the image's is 10001)")
        if security.get("allowPrivilegeEscalation") is not False:
            self.problem(what, "allowPrivilegeEscalation is not false")
        if security.get("readOnlyRootFilesystem") is not True:
            self.problem(what, "readOnlyRootFilesystem is not true")
        if "ALL" not in ((security.get("capabilities") or {}).get("drop") or []):
            self.problem(what, "capabilities do not drop ALL")
        seccomp = (security.get("seccompProfile") or pod_security.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            self.problem(what, "no seccomp profile (RuntimeDefault)")

        pre_stop = ((container.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}
        if service == "order-api":
            if not pre_stop:
                self.problem(what, "no preStop pause: endpoints still route to a pod told to stop")
            deadline = int(settings.get("ORDER_DEADLINE_SECS", "10"))
            drain = pre_stop.get("seconds", 0) + deadline + API_RELAY_STOP_SECS
        else:
            drain = pre_stop.get("seconds", 0) + PROCESSOR_DRAIN_SECS
        grace = pod_spec.get("terminationGracePeriodSeconds", 30)
        if grace <= drain:
            self.problem(what, f"terminationGracePeriodSeconds {grace} is not longer than its drain on SIGTERM ({drain} s)")

        for source in container.get("envFrom") or []:
            ref = (source.get("configMapRef") or {}).get("name")
            if ref and not self.find("ConfigMap", ref) and not source["configMapRef"].get("optional"):
                self.problem(what, f"envFrom names ConfigMap {ref}, which is not in the manifests")

        labels = pod["metadata"].get("labels") or {}

        def selects(selector):
            match = (selector or {}).get("matchLabels") or {}
            return bool(match) and all(labels.get(k) == v for k, v in match.items())

        if not any(selects(p["spec"].get("selector")) for p in self.find("PodDisruptionBudget")):
            self.problem(what, "no PodDisruptionBudget selects its pods")

        # The metrics port: declared, where the setting binds it, scraped by
        # annotation, in no Service, admitted only from named peers.
        metrics_port = ports.get("metrics")
        if metrics_port is None:
            self.problem(what, "no container port named metrics")
        else:
            address = settings.get(rules["metrics_setting"], "")
            if address.rpartition(":")[2] != str(metrics_port):
                self.problem(what, f"{rules['metrics_setting']}={address!r} does not listen on the metrics port {metrics_port}")
            if str((pod["metadata"].get("annotations") or {}).get("prometheus.io/port")) != str(metrics_port):
                self.problem(what, "prometheus.io/port does not name the metrics port")
            for svc in self.find("Service"):
                if not selects({"matchLabels": svc["spec"].get("selector") or {}}):
                    continue
                for port in svc["spec"].get("ports") or []:
                    if port.get("targetPort", port["port"]) in ("metrics", metrics_port):
                        self.problem(f"Service/{svc['metadata']['name']}", "exposes the metrics port")
            policies = [p for p in self.find("NetworkPolicy") if selects(p["spec"].get("podSelector"))]
            if not policies:
                self.problem(what, "no NetworkPolicy guards the metrics port")
            for policy in policies:
                for rule in policy["spec"].get("ingress") or []:
                    rule_ports = [p.get("port") for p in rule.get("ports") or []]
                    opens_metrics = not rule_ports or "metrics" in rule_ports or metrics_port in rule_ports
                    if opens_metrics and not rule.get("from"):
                        self.problem(f"NetworkPolicy/{policy['metadata']['name']}", "admits anyone to the metrics port")

        # AWS: the pod's identity; LocalStack's placeholder only beside an endpoint.
        for key in AWS_KEY_NAMES:
            if key in settings:
                if settings[key] != LOCALSTACK_PLACEHOLDER or not settings.get("AWS_ENDPOINT_URL"):
                    self.problem(what, f"{key} is set: on AWS the pod's identity gives credentials, never keys in a manifest")

    def check_scaling(self):
        hpas = self.find("HorizontalPodAutoscaler")
        api = [h for h in hpas if h["spec"]["scaleTargetRef"]["name"] == "order-api"]
        if not any(
            m.get("type") == "Resource" and m["resource"]["name"] == "cpu"
            for h in api
            for m in h["spec"].get("metrics") or []
        ):
            self.problem("order-api", "no HorizontalPodAutoscaler on CPU")
        if any(h["spec"]["scaleTargetRef"]["name"] == "order-processor" for h in hpas):
            self.problem("order-processor", "an HPA targets it: KEDA's ScaledObject owns its scaling")
        scaled = [s for s in self.find("ScaledObject") if s["spec"]["scaleTargetRef"]["name"] == "order-processor"]
        if not any(t.get("type") == "aws-sqs-queue" for s in scaled for t in s["spec"].get("triggers") or []):
            self.problem("order-processor", "no KEDA ScaledObject with an aws-sqs-queue trigger")
        for s in scaled:
            for trigger in s["spec"].get("triggers") or []:
                ref = (trigger.get("authenticationRef") or {}).get("name")
                if ref and not self.find("TriggerAuthentication", ref):
                    self.problem(f"ScaledObject/{s['metadata']['name']}", f"authenticationRef {ref} is not in the manifests")

    def check_every_workload(self):
        for kind in ("Deployment", "StatefulSet"):
            for workload in self.find(kind):
                for container in workload["spec"]["template"]["spec"]["containers"]:
                    if "memory" not in ((container.get("resources") or {}).get("limits") or {}):
                        self.problem(self.ident(workload), f"container {container['name']} has no memory limit")
                    if not container.get("readinessProbe"):
                        self.problem(self.ident(workload), f"container {container['name']} has no readiness probe")

    def run(self):
        self.validate_schemas()
        for service, rules in SERVICES.items():
            self.check_service(service, rules)
        self.check_scaling()
        self.check_every_workload()
        return self.problems


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kubernetes-version", required=True)
    parser.add_argument("--crds", required=True)
    parser.add_argument("rendered", nargs="+", help="NAME=FILE")
    args = parser.parse_args()

    crd_schemas = load_crd_schemas(args.crds)
    if not crd_schemas:
        sys.exit(f"check-k8s: no CustomResourceDefinition in {args.crds}")
    problems = []
    for item in args.rendered:
        name, _, path = item.partition("=")
        resources = [r for r in yaml.safe_load_all(pathlib.Path(path).read_text()) if r]
        found = Checker(name, resources, args.kubernetes_version, crd_schemas).run()
        problems += found
        if not found:
            kinds = sorted({r["kind"] for r in resources})
            print(f"check-k8s: {name}: {len(resources)} resources valid ({', '.join(kinds)})")
    for problem in problems:
        print(f"check-k8s: {problem}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
